"""adamp_keras against the NumPy reference: float64 trajectories, every branch, both layouts,
and the base-class options (clipping, EMA, accumulation, loss scale, schedules, decay masks).

Expected values come from ``adamp_core`` (the reference) on the same gradients; the reference's
own default ``channel_axis`` is 0, so it is always passed.
"""

from __future__ import annotations

import zlib

import keras
import numpy as np
import pytest
from adamp_keras import AdamP

from adamp_core import adamp_init, adamp_step, sgdp_init, sgdp_step
from adamp_core.testing import branch_gradient, reference_trajectory
from tests.keras.helpers import BACKEND, assert_close, make, run, views

STEPS = 5
REFERENCE = {"adamp": (adamp_init, adamp_step), "sgdp": (sgdp_init, sgdp_step)}

# (shape, channel_axis): axis -1 is the Keras default and is not passed to Keras (it must be
# what the optimizer does unasked); the other axes are passed explicitly.
LAYOUTS = [
    ((4, 3), -1),  # Keras Dense kernel (in, out)
    ((3, 3, 2, 5), -1),  # Keras Conv2D kernel (kh, kw, in, out)
    ((4, 3), 0),  # PyTorch Linear layout
    ((3, 3, 2, 5), 0),  # PyTorch Conv layout read as (out, ...)
    ((2, 5, 3), 1),
]
CONFIGS = {
    "adamp": [
        {"lr": 0.1, "weight_decay": 0.1},
        {
            "lr": 0.05,
            "betas": (0.8, 0.99),
            "eps": 1e-6,
            "weight_decay": 0.3,
            "delta": 0.2,
            "wd_ratio": 0.5,
            "nesterov": True,
        },
    ],
    "sgdp": [
        {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1},
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05, "wd_ratio": 0.3},
        {"lr": 0.1, "momentum": 0.5, "dampening": 0.3, "project_buffer": True, "weight_decay": 0.1},
        {"lr": 0.2, "weight_decay": 0.1},  # momentum 0: no buffer is stored
    ],
}
CASES = [
    (name, i, layout, branch)
    for name, configs in CONFIGS.items()
    for i in range(len(configs))
    for layout in LAYOUTS
    for branch in ("channel", "layer", "none")
]


def branch_grads(name, param, branch, axis, hp, rng):
    """Gradients built on the reference's current parameter, so each step reaches ``branch``."""
    init, step = REFERENCE[name]
    p, state, grads = param, init(param), []
    for _ in range(STEPS):
        g = branch_gradient(p, rng, branch, channel_axis=axis)
        grads.append(g)
        p, state = step(p, g, state, **hp, channel_axis=axis)
    return grads


@pytest.mark.parametrize(("name", "config", "layout", "branch"), CASES, ids=str)
def test_float64_trajectory_equals_reference(float64, name, config, layout, branch):
    shape, axis = layout
    hp = CONFIGS[name][config]
    rng = np.random.default_rng(zlib.crc32(repr((name, config, layout, branch)).encode()))
    param = rng.standard_normal(shape)
    grads = branch_grads(name, param, branch, axis, hp, rng)
    expected = reference_trajectory(name, param, grads, **hp, channel_axis=axis)
    reached = views(param, grads, expected, hp, axis)
    assert reached == [None if branch == "none" else branch] * STEPS  # the case covers its branch

    extra = {} if axis == -1 else {"channel_axis": axis}
    opt = make(name, hp, track_projection=True, **extra)
    actual = run(opt, param, grads, name)
    for t, ((p, state), (p_ref, state_ref)) in enumerate(zip(actual, expected, strict=True)):
        assert_close(p, p_ref, what=f"param at step {t + 1}")
        ref_arrays = [x for x in state_ref if isinstance(x, np.ndarray)]
        for s, s_ref in zip(state, ref_arrays, strict=True):
            if s is not None:  # SGDP with momentum 0 keeps no buffer
                assert_close(s, s_ref, what=f"state at step {t + 1}")
    # The counters report the reference's decisions.
    (counts,) = opt.projection_counts().values()
    assert counts == (reached.count("channel"), reached.count("layer"))


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_vectors_are_never_projected(float64, name):
    # D4: a bias with a gradient parallel to it would fire any view; ndim 1 is never tested.
    param = np.linspace(-1.0, 1.0, 6)
    grads = [0.1 * np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0]) for _ in range(STEPS)]
    hp = CONFIGS[name][0]
    expected = reference_trajectory(name, param, grads, **hp)
    actual = run(make(name, hp), param, grads, name)
    for (p, _), (p_ref, _) in zip(actual, expected, strict=True):
        assert_close(p, p_ref)


def test_float16_parameters_step_in_float32():
    # D9: eps = 1e-8 is 0 in float16, so a zero gradient entry would give 0/0 there. The step is
    # computed in float32 (state too) and only the result is stored in float16; the reference
    # does the same, so the two agree to the rounding of the stored float16 value.
    rng = np.random.default_rng(7)
    param = rng.standard_normal((4, 3)).astype(np.float16)
    grads = [branch_gradient(param, rng, "none", channel_axis=-1) for _ in range(3)]
    for g in grads:
        g[0, :] = 0.0
    grads = [g.astype(np.float16) for g in grads]
    hp = {"lr": 0.01, "weight_decay": 0.1}
    expected = reference_trajectory("adamp", param, grads, **hp, channel_axis=-1)
    actual = run(make("adamp", hp), param, grads, "adamp")
    for (p, (m, v)), (p_ref, _) in zip(actual, expected, strict=True):
        assert p.dtype == np.float16 and np.isfinite(p).all()
        assert m.dtype == v.dtype == np.float32
        assert_close(p, p_ref, dtype="float16")


def test_zero_size_parameter_is_accepted():
    # D4: nothing to update, no error; the other variable of the same step is updated.
    opt = make("adamp", {"lr": 0.1})
    empty = keras.Variable(np.zeros((0, 3), np.float32), name="empty")
    w = keras.Variable(np.ones((2, 3), np.float32), name="w")
    opt.apply([keras.ops.zeros((0, 3)), keras.ops.ones((2, 3))], [empty, w])
    assert tuple(empty.shape) == (0, 3)
    assert np.all(keras.ops.convert_to_numpy(w) < 1.0)


# ---- base-class options, each checked against the reference fed with what Keras feeds it ----

P0 = np.random.default_rng(3).standard_normal((4, 3))
G = [np.random.default_rng(10 + t).standard_normal((4, 3)) for t in range(4)]
HP = {"lr": 0.1, "weight_decay": 0.2}


def _reference(grads, hp=HP, param=P0):
    return [p for p, _ in reference_trajectory("adamp", param, grads, **hp, channel_axis=-1)]


def _keras(grads, param=P0, **extra):
    return [p for p, _ in run(make("adamp", HP, **extra), param, grads, "adamp")]


# Keras' torch backend computes the clipping scale of float64 gradients through float32
# (measured: the clipped gradient is off by 1e-8 relative, before any AdamP arithmetic).
CLIP_DTYPE = "float32-scale" if BACKEND == "torch" else "float64"


def test_clipnorm(float64):
    # Keras clips each gradient to norm <= clipnorm: g * c / max(|g|, c).
    c = 0.5
    clipped = [g * c / max(np.linalg.norm(g), c) for g in G]
    assert all(np.linalg.norm(g) > c for g in G)  # every step is clipped
    for p, p_ref in zip(_keras(G, clipnorm=c), _reference(clipped), strict=True):
        assert_close(p, p_ref, CLIP_DTYPE)


def test_clipvalue(float64):
    clipped = [np.clip(g, -0.3, 0.3) for g in G]
    for p, p_ref in zip(_keras(G, clipvalue=0.3), _reference(clipped), strict=True):
        assert_close(p, p_ref)


def test_global_clipnorm(float64):
    # One variable: the global norm is its norm; Keras scales by c * min(1/|g|, 1/c).
    c = 0.5
    clipped = [g * c * min(1 / np.linalg.norm(g), 1 / c) for g in G]
    for p, p_ref in zip(_keras(G, global_clipnorm=c), _reference(clipped), strict=True):
        assert_close(p, p_ref, CLIP_DTYPE)


def test_loss_scale_factor(float64):
    # Keras divides the gradients by the factor before the step; 4 is exact in binary.
    scaled = [4.0 * g for g in G]
    for p, p_ref in zip(_keras(scaled, loss_scale_factor=4.0), _reference(G), strict=True):
        assert_close(p, p_ref)


def test_gradient_accumulation(float64):
    # Every second apply steps with the mean of the two gradients; t counts those steps.
    means = [(G[0] + G[1]) / 2, (G[2] + G[3]) / 2]
    ps = _keras(G, gradient_accumulation_steps=2)
    ref = _reference(means)
    assert_close(ps[0], P0)
    assert_close(ps[1], ref[0])
    assert_close(ps[2], ref[0])
    assert_close(ps[3], ref[1])


def test_ema(float64):
    # Keras' EMA after each step: a <- mu a + (1 - mu) p, with mu = 0 on the first step.
    mu = 0.9
    opt = make("adamp", HP, use_ema=True, ema_momentum=mu)
    var = keras.Variable(P0, name="w")
    for g in G:
        opt.apply([keras.ops.convert_to_tensor(g)], [var])
    average = None
    for p in _reference(G):
        average = p if average is None else mu * average + (1 - mu) * p
    opt.finalize_variable_values([var])
    assert_close(keras.ops.convert_to_numpy(var), average)


def test_learning_rate_schedule(float64):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1, 2], [0.1, 0.05, 0.02])
    lrs = [float(schedule(t)) for t in range(len(G))]
    p, state, expected = P0, adamp_init(P0), []
    for g, lr in zip(G, lrs, strict=True):
        p, state = adamp_step(p, g, state, **{**HP, "lr": lr}, channel_axis=-1)
        expected.append(p)
    opt = AdamP(learning_rate=schedule, weight_decay=HP["weight_decay"])
    actual = [p for p, _ in run(opt, P0, G, "adamp")]
    for a, e in zip(actual, expected, strict=True):
        assert_close(a, e)


def test_exclude_from_weight_decay(float64):
    # The base class's own decay stays off (AdamP applies lr * wd * r itself, A7) and its
    # exclusion list still switches AdamP's decay off for the named variables.
    opt = make("adamp", HP)
    opt.exclude_from_weight_decay(var_names=["bias"])
    w = keras.Variable(P0, name="kernel")
    b = keras.Variable(P0, name="bias")
    for g in G:
        opt.apply([keras.ops.convert_to_tensor(g)] * 2, [w, b])
    assert_close(keras.ops.convert_to_numpy(w), _reference(G)[-1])
    assert_close(keras.ops.convert_to_numpy(b), _reference(G, {**HP, "weight_decay": 0.0})[-1])


@pytest.mark.skipif(BACKEND != "tensorflow", reason="XLA here is TensorFlow's jit_compile")
@pytest.mark.parametrize("branch", ["channel", "layer", "none"])
@pytest.mark.parametrize("shape", [(4, 4, 2, 5), (3, 3, 2, 5), (6, 3)], ids=str)
@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_xla_trajectory_equals_reference(float64, name, shape, branch):
    """The step compiled by XLA follows the reference too. XLA rewrites reductions (the channel
    sums are split in two stages for it, 16, 2 and 2 rows per block in these shapes), so the
    compiled graph is checked on its own."""
    import tensorflow as tf

    hp = CONFIGS[name][0]
    rng = np.random.default_rng(zlib.crc32(repr(("xla", name, shape, branch)).encode()))
    param = rng.standard_normal(shape)
    grads = branch_grads(name, param, branch, -1, hp, rng)
    expected = reference_trajectory(name, param, grads, **hp, channel_axis=-1)
    assert views(param, grads, expected, hp, -1) == [None if branch == "none" else branch] * STEPS
    opt = make(name, hp)
    var = keras.Variable(param, dtype="float64", name="w")
    opt.build([var])
    step = tf.function(lambda g: opt.apply([g], [var]), jit_compile=True)
    for t, (g, (p_ref, _)) in enumerate(zip(grads, expected, strict=True)):
        step(tf.constant(g))
        assert_close(keras.ops.convert_to_numpy(var), p_ref, what=f"param at step {t + 1}")


def _applier(opt, var, mode):
    import tensorflow as tf

    def apply(g):
        opt.apply([g], [var])

    return (
        tf.function(apply, jit_compile=mode == "xla") if mode in ("tf.function", "xla") else apply
    )


# Configurations the fused paths take on TensorFlow: both AdamP configurations, SGDP with
# momentum, with Nesterov, and with dampening (its gradient is scaled before the kernel).
FUSED = [("adamp", hp) for hp in CONFIGS["adamp"]] + [
    ("sgdp", CONFIGS["sgdp"][0]),
    ("sgdp", CONFIGS["sgdp"][1]),
    ("sgdp", {"lr": 0.1, "momentum": 0.5, "dampening": 0.3, "weight_decay": 0.1}),
]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's fused kernels")
@pytest.mark.parametrize("branch", ["channel", "layer", "none"])
@pytest.mark.parametrize(("name", "hp"), FUSED, ids=str)
def test_tensorflow_fused_path_equals_keras_ops_path(float64, monkeypatch, name, hp, branch):
    """On TensorFlow, AdamP and SGDP take TensorFlow's fused kernels (and an XLA-compiled
    projection) eagerly and in tf.function, and the keras.ops path under XLA; all follow the
    reference, with the same decisions, and the scratch of AdamP's fused kernel is not
    optimizer state (the variables, and so .keras files, are the same)."""
    import adamp_keras
    import tensorflow as tf

    cls = {"adamp": adamp_keras.AdamP, "sgdp": adamp_keras.SGDP}[name]
    calls = []
    fused = cls._fused_update
    monkeypatch.setattr(cls, "_fused_update", lambda self, *a: calls.append(1) or fused(self, *a))
    rng = np.random.default_rng(zlib.crc32(repr(("fused", name, hp, branch)).encode()))
    param = rng.standard_normal((3, 3, 2, 5))
    grads = branch_grads(name, param, branch, -1, hp, rng)
    expected = reference_trajectory(name, param, grads, **hp, channel_axis=-1)
    reached = views(param, grads, expected, hp, -1)
    assert reached == [None if branch == "none" else branch] * STEPS
    ends = {}
    for mode in ("eager", "tf.function", "xla", "keras.ops"):
        opt = make(name, hp, track_projection=True)
        if mode == "keras.ops":
            opt.use_fused_kernel = False
        var = keras.Variable(param, dtype="float64", name="w")
        opt.build([var])
        step = _applier(opt, var, mode)
        calls.clear()
        for g in grads:
            step(tf.constant(g))
        traced = {"eager": STEPS, "tf.function": 1, "xla": 0, "keras.ops": 0}[mode]
        assert len(calls) == traced, mode  # a tf.function traces its step once
        assert_close(keras.ops.convert_to_numpy(var), expected[-1][0], what=mode)
        (counts,) = opt.projection_counts().values()
        assert counts == (reached.count("channel"), reached.count("layer")), mode
        ends[mode] = [v.name for v in opt.variables]
    assert ends["eager"] == ends["keras.ops"]


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's fused kernels")
@pytest.mark.parametrize(
    ("hp", "dtype", "fused"),
    [
        ({"momentum": 0.9}, "float64", True),
        ({"momentum": 0.9, "nesterov": True, "project_buffer": True}, "float64", True),
        ({"momentum": 0.9, "project_buffer": True}, "float64", False),  # D6: u is stored
        ({}, "float64", False),  # no momentum, no buffer
        ({"momentum": 0.9}, "float16", False),  # D9: float32 buffer, float16 variable
    ],
    ids=str,
)
def test_sgdp_takes_the_fused_kernel_where_it_applies(request, monkeypatch, hp, dtype, fused):
    """ResourceApplyMomentum stores the momentum buffer and updates a variable of its own
    dtype: a stored projected direction (D6), no buffer, or a half-precision variable take
    keras.ops. Either way the step follows the reference."""
    import adamp_keras

    if dtype == "float64":
        request.getfixturevalue("float64")  # float64 learning rate too
    calls = []
    original = adamp_keras.SGDP._fused_update
    monkeypatch.setattr(
        adamp_keras.SGDP, "_fused_update", lambda self, *a: calls.append(1) or original(self, *a)
    )
    hp = {"lr": 0.1, "weight_decay": 0.1, **hp}
    rng = np.random.default_rng(3)
    param = rng.standard_normal((3, 4)).astype(dtype)
    grads = [branch_gradient(param, rng, "channel", channel_axis=-1).astype(dtype) for _ in "abc"]
    actual = run(make("sgdp", hp), param, grads, "sgdp")
    assert bool(calls) is fused
    expected = reference_trajectory("sgdp", param, grads, **hp, channel_axis=-1)
    assert_close(actual[-1][0], expected[-1][0], what="param", dtype=dtype)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's fused kernels")
@pytest.mark.parametrize(
    ("betas", "fused"),
    [((0.9, 0.999), True), ((0.5, 0.5), True), ((0.9, 0.0), False), ((0.3, 0.999), False)],
)
def test_small_betas_take_the_keras_ops_path(float64, betas, fused):
    """TensorFlow's kernel forms m + (g - m)(1 - b), which cancels for small b (b2 = 0 was off
    by 1e-9 in float64 in the conformance suite); those betas take the keras.ops path."""
    hp = {"lr": 0.1, "betas": betas, "weight_decay": 0.1}
    opt = make("adamp", hp)
    rng = np.random.default_rng(7)
    param = 10 * rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) * s for s in (100.0, 1e-3, 1e-3)]
    actual = run(opt, param, grads, "adamp")
    assert opt._tf_fused is fused
    expected = reference_trajectory("adamp", param, grads, **hp, channel_axis=-1)
    assert_close(actual[-1][0], expected[-1][0], what="param")
