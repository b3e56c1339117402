"""adamp_jax inside optax: chain, schedules, inject_hyperparams, masks, layouts, jit, errors.

Expected values come from the NumPy reference (``adamp_core``) run in float64 on the same
inputs, or from an invariant stated in the test.
"""

from __future__ import annotations

import re

import adamp_jax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamp_core import adamp_init, adamp_step
from adamp_core.testing import branch_gradient

RTOL_F64 = 1e-12
RTOL_F32 = 2e-6  # float32 step vs float64 reference over a few steps: measured about 3e-7


def problem(seed: int = 0, branch: str = "channel"):
    """Flax-layout params (conv kernel, dense kernel, bias) and gradients reaching ``branch``."""
    rng = np.random.default_rng(seed)
    params = {
        "conv": rng.standard_normal((3, 3, 2, 4)),
        "dense": rng.standard_normal((5, 3)),
        "bias": rng.standard_normal(3),
    }
    grads = {
        "conv": branch_gradient(params["conv"], rng, branch, channel_axis=-1),
        "dense": branch_gradient(params["dense"], rng, branch, channel_axis=-1),
        "bias": rng.standard_normal(3),
    }
    return params, grads


def f32(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def run(opt, params, grads_list, jit=True):
    state = opt.init(params)

    def step(params, state, g):
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    for g in grads_list:
        params, state = step(params, state, g)
    return params, state


def ref_adamp(params, grads_list, lrs, wds=None, axis=-1, **hp):
    """The reference over a dict of params, with a learning rate (and decay) per step."""
    out = {}
    for k, p in params.items():
        p, s = np.asarray(p, np.float64), adamp_init(np.asarray(p, np.float64))
        for i, g in enumerate(grads_list):
            wd = hp.get("weight_decay", 0.0) if wds is None else wds[i]
            kw = {**hp, "weight_decay": wd}
            p, s = adamp_step(p, np.asarray(g[k]), s, lr=lrs[i], channel_axis=axis, **kw)
        out[k] = p
    return out


def assert_tree_close(got, want, rtol):
    for k in want:
        w = np.asarray(want[k], np.float64)
        np.testing.assert_allclose(
            np.asarray(got[k], np.float64), w, rtol=0, atol=rtol * np.abs(w).max()
        )


# ----------------------------------------------------------------------------- errors

BAD_INPUTS = [  # (factory, kwargs, error, message regex)
    (adamp_jax.adamp, {"learning_rate": float("nan")}, ValueError, "learning_rate must be fin"),
    (adamp_jax.sgdp, {"learning_rate": float("inf")}, ValueError, "learning_rate must be fin"),
    (adamp_jax.sgdp, {"learning_rate": "0.1"}, ValueError, "learning_rate must be a real"),
    (adamp_jax.adamp, {"learning_rate": 1e-3, "mu_dtype": "int8"}, ValueError, "mu_dtype"),
    (
        adamp_jax.sgdp,
        {"learning_rate": 0.1, "accumulator_dtype": "complex64"},
        ValueError,
        "accumulator_dtype must be None or a real floating dtype",
    ),
    (adamp_jax.adamp, {"learning_rate": 1e-3, "b1": 1.0}, ValueError, r"b1 must be in \[0, 1\)"),
    (adamp_jax.adamp, {"learning_rate": 1e-3, "b2": -0.1}, ValueError, r"b2 must be in \[0, 1\)"),
    (adamp_jax.adamp, {"learning_rate": 1e-3, "eps": 0.0}, ValueError, r"eps must be > 0"),
    (adamp_jax.adamp, {"learning_rate": 1e-3, "weight_decay": -1.0}, ValueError, "weight_decay"),
    (adamp_jax.adamp, {"learning_rate": 1e-3, "wd_ratio": 1.5}, ValueError, r"wd_ratio must be in"),
    (adamp_jax.adamp, {"learning_rate": 1e-3, "delta": -0.1}, ValueError, r"delta must be >= 0"),
    (adamp_jax.adamp, {"learning_rate": 1e-3, "nesterov": 2}, ValueError, "nesterov must be True"),
    (adamp_jax.sgdp, {"learning_rate": 0.1, "momentum": 1.0}, ValueError, r"momentum must be in"),
    (adamp_jax.sgdp, {"learning_rate": 0.1, "dampening": 2.0}, ValueError, "dampening"),
    (adamp_jax.sgdp, {"learning_rate": 0.1, "nesterov": True}, ValueError, "requires momentum > 0"),
    (adamp_jax.scale_by_sgdp, {"project_buffer": "yes"}, ValueError, "project_buffer must be"),
]


@pytest.mark.parametrize("factory,kwargs,error,regex", BAD_INPUTS)
def test_bad_hyperparameters_raise_at_construction(factory, kwargs, error, regex):
    with pytest.raises(error, match=regex):
        factory(**kwargs)


BAD_TREES = [  # (kwargs, params, grads, message regex): raised by init or update, before any change
    (
        {"channel_axis": 2},
        {"w": np.ones((2, 3))},
        None,
        re.escape("channel_axis must be in [-2, 2)"),
    ),
    ({"channel_axis": 1.5}, {"w": np.ones((2, 3))}, None, "channel_axis must be an integer"),
    ({"channel_axis": {"v": 0}}, {"w": np.ones((2, 3))}, None, "channel_axis must be a pytree"),
    ({"channel_axis": lambda path, x: None}, {"w": np.ones((2, 3))}, None, "must be an integer"),
    ({"mask": {"v": True}}, {"w": np.ones((2, 3))}, None, "mask must be a pytree"),
    ({}, {"w": np.ones((2, 3))}, {"w": np.ones((3, 2))}, re.escape("grad shape (3, 2)")),
    ({}, {"w": np.ones((2, 3))}, {"v": np.ones((2, 3))}, "updates does not have the structure"),
]


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
@pytest.mark.parametrize("kwargs,params,grads,regex", BAD_TREES)
def test_bad_trees_raise_clearly(name, kwargs, params, grads, regex):
    opt = getattr(adamp_jax, name)(0.1, **kwargs)
    params = f32(params)
    with pytest.raises(ValueError, match=regex):
        state = opt.init(params)
        opt.update(f32(grads), state, params)


@pytest.mark.parametrize("factory", [adamp_jax.scale_by_adamp, adamp_jax.scale_by_sgdp])
def test_update_without_params_is_a_clear_error(factory):
    params = {"w": jnp.ones((2, 3))}
    opt = factory()
    with pytest.raises(ValueError, match=r"needs params.*update\(updates, state, params\)"):
        opt.update(params, opt.init(params))


# --------------------------------------------------------------- optax composition


def test_schedule_equals_reference_with_per_step_learning_rate():
    params, grads = problem(1)

    def schedule(count):  # exact in float64 for an int32 count, so both sides see equal rates
        return 0.1 * 0.5**count

    lrs = [0.1 * 0.5**i for i in range(4)]  # optax's count is 0 at the first update
    want = ref_adamp(params, [grads] * 4, lrs, weight_decay=0.1)
    with jax.enable_x64(True):
        got, _ = run(adamp_jax.adamp(schedule, weight_decay=0.1), params, [grads] * 4)
    assert_tree_close(got, want, RTOL_F64)


def test_chain_with_clipping_equals_reference_on_clipped_gradients():
    params, grads = problem(2)
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads.values()))
    clipped = {k: g * (0.5 / norm) for k, g in grads.items()}  # clip_by_global_norm(0.5)
    want = ref_adamp(params, [clipped] * 3, [0.05] * 3, weight_decay=0.01)
    opt = optax.chain(
        optax.clip_by_global_norm(0.5),
        adamp_jax.scale_by_adamp(weight_decay=0.01),
        optax.scale_by_learning_rate(0.05),
    )
    with jax.enable_x64(True):
        got, _ = run(opt, params, [grads] * 3)
    assert_tree_close(got, want, RTOL_F64)


@pytest.mark.parametrize("axis", [-1, 0])
def test_inject_hyperparams_follows_changes_of_weight_decay(axis):
    """An int channel_axis becomes a traced array under inject_hyperparams; it still works."""
    params, grads = problem(3)
    want = ref_adamp(params, [grads] * 2, [0.1, 0.1], wds=[0.2, 0.0], axis=axis)
    opt = optax.inject_hyperparams(adamp_jax.adamp)(
        learning_rate=0.1, weight_decay=0.2, channel_axis=axis
    )
    with jax.enable_x64(True):
        state = opt.init(params)
        step = jax.jit(opt.update)
        p = params
        for wd in (0.2, 0.0):
            state.hyperparams["weight_decay"] = jnp.asarray(wd)
            updates, state = step(grads, state, p)
            p = optax.apply_updates(p, updates)
    assert_tree_close(p, want, RTOL_F64)


def test_inject_hyperparams_sgdp_matches_plain_sgdp():
    params, grads = f32(problem(4))
    kw = {"momentum": 0.9, "weight_decay": 0.1, "nesterov": True}
    want, _ = run(adamp_jax.sgdp(0.05, **kw), params, [grads] * 3)
    got, _ = run(optax.inject_hyperparams(adamp_jax.sgdp)(0.05, **kw), params, [grads] * 3)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL_F32)


# -------------------------------------------------------------- masks and layouts


def test_mask_removes_weight_decay_only_where_false():
    params, grads = f32(problem(5))
    mask = {"conv": True, "dense": False, "bias": False}
    masked, _ = run(adamp_jax.adamp(0.1, weight_decay=0.5, mask=mask), params, [grads] * 2)
    decayed, _ = run(adamp_jax.adamp(0.1, weight_decay=0.5), params, [grads] * 2)
    plain, _ = run(adamp_jax.adamp(0.1), params, [grads] * 2)
    np.testing.assert_array_equal(masked["conv"], decayed["conv"])
    np.testing.assert_array_equal(masked["dense"], plain["dense"])
    np.testing.assert_array_equal(masked["bias"], plain["bias"])
    # the callable form (optax's idiom: decay every leaf of ndim >= 2) gives the same result
    by_ndim, _ = run(
        adamp_jax.adamp(
            0.1, weight_decay=0.5, mask=lambda p: jax.tree.map(lambda x: x.ndim > 2, p)
        ),
        params,
        [grads] * 2,
    )
    for k in params:
        np.testing.assert_array_equal(by_ndim[k], masked[k])


def test_channel_axis_int_pytree_and_callable_agree():
    params, grads = f32(problem(6))
    axes = {"conv": -1, "dense": 1, "bias": 0}
    by_int, _ = run(adamp_jax.adamp(0.1, channel_axis=-1), params, [grads] * 2)
    by_tree, _ = run(adamp_jax.adamp(0.1, channel_axis=axes), params, [grads] * 2)
    by_fn, _ = run(
        adamp_jax.adamp(0.1, channel_axis=lambda path, x: x.ndim - 1), params, [grads] * 2
    )
    for k in params:
        np.testing.assert_array_equal(by_tree[k], by_int[k])
        np.testing.assert_array_equal(by_fn[k], by_int[k])


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_moving_the_channel_axis_moves_the_result(name):
    """Invariant: a transposed layout with the matching channel_axis gives the
    transposed result; here Flax (kh, kw, in, out) with -1 against Equinox (out, in, kh, kw)
    with 0."""
    rng = np.random.default_rng(8)
    p = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    g = branch_gradient(p, rng, "channel", channel_axis=-1).astype(np.float32)
    perm = (3, 2, 0, 1)
    kw = {"momentum": 0.9} if name == "sgdp" else {}
    flax, _ = run(getattr(adamp_jax, name)(0.1, weight_decay=0.1, **kw), {"w": p}, [{"w": g}] * 3)
    eqx, _ = run(
        getattr(adamp_jax, name)(0.1, weight_decay=0.1, channel_axis=0, **kw),
        {"w": p.transpose(perm)},
        [{"w": g.transpose(perm)}] * 3,
    )
    np.testing.assert_allclose(eqx["w"], np.asarray(flax["w"]).transpose(perm), rtol=RTOL_F32)


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_none_and_zero_size_leaves(name):
    params = {"w": jnp.ones((2, 3)), "none": None, "empty": jnp.zeros((0, 4)), "e1": jnp.zeros(0)}
    grads = {"w": jnp.ones((2, 3)), "none": None, "empty": jnp.zeros((0, 4)), "e1": jnp.zeros(0)}
    new, _ = run(getattr(adamp_jax, name)(0.1, weight_decay=0.1), params, [grads] * 2)
    assert new["none"] is None
    assert new["empty"].shape == (0, 4) and new["e1"].shape == (0,)
    assert np.all(np.isfinite(new["w"]))


# ----------------------------------------------------------------- traceability


@pytest.mark.parametrize(
    "make",
    [
        lambda: adamp_jax.adamp(1e-3, weight_decay=0.1),
        lambda: adamp_jax.sgdp(0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
        lambda: adamp_jax.adamp(optax.cosine_decay_schedule(1e-3, 10), weight_decay=0.1),
        lambda: optax.inject_hyperparams(adamp_jax.adamp)(learning_rate=1e-3, weight_decay=0.1),
    ],
    ids=["adamp", "sgdp", "adamp-schedule", "adamp-inject"],
)
def test_repeated_steps_compile_once(make):
    """State dtypes and weak types must not change between steps, or jit retraces."""
    opt = make()
    params, grads = f32(problem(9))
    traces = []

    @jax.jit
    def step(params, state, g):
        traces.append(1)  # runs once per trace, and each trace is one compilation
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(5):
        params, state = step(params, state, grads)
    assert len(traces) == 1
    assert step._cache_size() == 1


def test_donated_buffers_are_consumed_and_results_unchanged():
    opt = adamp_jax.adamp(1e-2, weight_decay=0.1)
    params, grads = f32(problem(10))

    def step(params, state, g):
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    want, _ = jax.jit(step)(params, opt.init(params), grads)
    p_in, s_in = jax.tree.map(jnp.copy, params), opt.init(params)
    got, _ = jax.jit(step, donate_argnums=(0, 1))(p_in, s_in, grads)
    assert all(x.is_deleted() for x in jax.tree.leaves((p_in, s_in)))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


def test_state_is_a_namedtuple_of_arrays_and_round_trips_through_numpy():
    params, grads = f32(problem(11))
    opt = adamp_jax.adamp(1e-2, weight_decay=0.1)
    _, state = run(opt, params, [grads] * 2)
    inner = state[0]
    assert isinstance(inner, adamp_jax.ScaleByAdamPState)
    assert inner.count.dtype == jnp.int32 and inner.count.shape == ()
    leaves, treedef = jax.tree.flatten(state)
    assert all(isinstance(x, jax.Array) for x in leaves)
    restored = treedef.unflatten([jnp.asarray(np.array(x)) for x in leaves])  # a checkpoint
    u1, _ = opt.update(grads, state, params)
    u2, _ = opt.update(grads, restored, params)
    for k in u1:
        np.testing.assert_array_equal(u1[k], u2[k])


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_zero_weight_and_zero_rows_stay_finite(name):
    """D4: a zero weight or zero gradient gives cos = 0, the view fires as a no-op, r = wd_ratio.

    Both selected-against branches are computed; none of them may produce NaN.
    """
    p = np.ones((4, 3), np.float32)
    p[1] = 0.0  # one zero channel row (Flax layout: channels on the last axis, rows are [:, j])
    p[:, 2] = 0.0
    params = {"w": jnp.asarray(p), "z": jnp.zeros((2, 3))}
    grads = {"w": jnp.zeros((4, 3)), "z": jnp.zeros((2, 3))}
    codes = adamp_jax.decide(params, grads)
    assert int(codes["w"]) == 1 and int(codes["z"]) == 1  # channel view fires: cos = 0 < bound
    new, _ = run(getattr(adamp_jax, name)(0.1, weight_decay=0.5, wd_ratio=0.2), params, [grads])
    # Zero gradient: u = 0, so the step is the decay alone, p (1 - lr wd wd_ratio) (A7 / S4).
    np.testing.assert_allclose(new["w"], p * (1 - 0.1 * 0.5 * 0.2), rtol=1e-6)
    np.testing.assert_array_equal(new["z"], np.zeros((2, 3)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_state_and_update_dtypes(dtype):
    """D9: state in float32 for low-precision params; updates and params in the params' dtype
    (the update as optax's optimizers return theirs)."""
    params = {"w": jnp.ones((3, 4), dtype)}
    grads = {"w": jnp.full((3, 4), 1e-3, dtype)}
    for opt in (adamp_jax.adamp(1e-3, weight_decay=0.1), adamp_jax.sgdp(0.1, momentum=0.9)):
        state = opt.init(params)
        updates, state = opt.update(grads, state, params)
        assert updates["w"].dtype == dtype
        assert all(x.dtype in (jnp.float32, jnp.int32) for x in jax.tree.leaves(state))
        assert optax.apply_updates(params, updates)["w"].dtype == dtype
        assert np.all(np.isfinite(np.asarray(updates["w"])))


def test_decide_reports_the_view_the_step_takes():
    params, grads = f32(problem(12, "channel"))
    codes = adamp_jax.decide(params, grads)
    assert [adamp_jax.VIEWS[int(codes[k])] for k in ("conv", "dense", "bias")] == [
        "channel",
        "channel",
        None,  # D4: 1-D leaves are never projected
    ]
    # A projected AdamP update has no component along each output channel of the weight (P4).
    updates, _ = adamp_jax.scale_by_adamp().update(
        grads, adamp_jax.scale_by_adamp().init(params), params
    )
    u, p = np.asarray(updates["conv"]), np.asarray(params["conv"])
    cos = np.sum(u * p, axis=(0, 1, 2)) / (
        np.linalg.norm(u.reshape(-1, 4), axis=0) * np.linalg.norm(p.reshape(-1, 4), axis=0)
    )
    assert np.max(np.abs(cos)) < 1e-5


def test_inject_hyperparams_with_a_mask_function_in_static_args():
    """docs/jax.md: a function-valued mask must be named in static_args, as for optax.adamw."""
    params, grads = f32(problem(13))
    mask = lambda t: jax.tree.map(lambda x: x.ndim > 1, t)  # noqa: E731
    want, _ = run(adamp_jax.adamp(0.1, weight_decay=0.5, mask=mask), params, [grads] * 2)
    injected = optax.inject_hyperparams(adamp_jax.adamp, static_args=("mask",))
    got, _ = run(injected(learning_rate=0.1, weight_decay=0.5, mask=mask), params, [grads] * 2)
    # injected hyperparameters are float32 arrays where the plain optimizer folds Python
    # constants: 1 - b2^t and the like round differently; measured 7e-7 of the largest entry
    assert_tree_close(got, want, 1e-5)
