"""adamp_jax against the NumPy reference: float64 trajectories, every branch, both layouts.

Expected values come from ``adamp_core.testing.reference_trajectory`` (the reference), run on
the same gradients. The reference's own default ``channel_axis`` is 0, so it is always passed.
"""

from __future__ import annotations

import zlib

import adamp_jax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from adamp_core import decide
from adamp_core.testing import branch_gradient, reference_trajectory

RTOL_F64 = 1e-12  # the bound; measured worst case: 6.6e-16 of the largest entry
STEPS = 5

# (shape, channel_axis): PyTorch-like layouts with axis 0, Flax layouts with the default -1.
LAYOUTS = [
    ((6, 4), 0),
    ((3, 3, 2, 5), 0),
    ((4, 5), -1),  # Flax Dense kernel (in, out)
    ((3, 3, 4, 6), -1),  # Flax Conv kernel (kh, kw, in, out)
    ((2, 3, 5), 1),
]
ADAMP_CONFIGS = [
    {},
    {"weight_decay": 0.1, "wd_ratio": 0.3},
    {"nesterov": True, "weight_decay": 0.05, "betas": (0.8, 0.99), "delta": 0.2},
    {"eps": 1e-3, "weight_decay": 0.01},
]
SGDP_CONFIGS = [
    {"momentum": 0.9},
    {"momentum": 0.9, "weight_decay": 0.1, "dampening": 0.1},
    {"momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
    {"momentum": 0.9, "project_buffer": True, "weight_decay": 0.1},
    {},
]


def _optax_kwargs(name: str, hp: dict) -> dict:
    hp = dict(hp)
    hp["learning_rate"] = hp.pop("lr")
    if name == "adamp" and "betas" in hp:
        hp["b1"], hp["b2"] = hp.pop("betas")
    return hp


def run_jax(name: str, p0: np.ndarray, grads: list, **hp) -> list:
    """The params and state after every step, from the optax transformation under jit."""
    opt = getattr(adamp_jax, name)(**_optax_kwargs(name, hp))
    params = jnp.asarray(p0)
    state = opt.init(params)

    @jax.jit
    def step(params, state, g):
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    out = []
    for g in grads:
        params, state = step(params, state, jnp.asarray(g))
        out.append((np.asarray(params), state[0]))
    return out


def assert_close(got, want, rtol: float) -> None:
    """``|got - want| <= rtol * max|want|`` elementwise: relative to the array's scale, because an
    entry that is a difference of near-equal terms (a moment after a sign change of g) carries
    the rounding of the terms, and XLA may fuse ``a * b + c`` into one FMA where NumPy rounds
    twice."""
    want = np.asarray(want, dtype=np.float64)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=0, atol=rtol * scale)


def assert_state_equal(name: str, jax_state, ref_state, rtol: float) -> None:
    if name == "adamp":
        # optax's names (count, mu, nu; trace) for the reference's (step, exp_avg, ...)
        assert int(jax_state.count) == ref_state.step
        pairs = [(jax_state.mu, ref_state.exp_avg), (jax_state.nu, ref_state.exp_avg_sq)]
    else:
        pairs = [(jax_state.trace, ref_state.momentum_buffer)]
    for got, want in pairs:
        assert_close(got, want, rtol)


@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=str)
@pytest.mark.parametrize("branch", ["channel", "layer", "none"])
@pytest.mark.parametrize(
    "name,hp",
    [("adamp", c) for c in ADAMP_CONFIGS] + [("sgdp", c) for c in SGDP_CONFIGS],
    ids=lambda x: x if isinstance(x, str) else ",".join(f"{k}={v}" for k, v in x.items()),
)
def test_float64_trajectory_equals_reference(name, hp, shape, axis, branch):
    rng = np.random.default_rng(zlib.crc32(repr((name, hp, shape, branch)).encode()))
    p0 = rng.standard_normal(shape)
    grads = [branch_gradient(p0, rng, branch, channel_axis=axis) for _ in range(STEPS)]
    hp = {"lr": 1e-2, **hp, "channel_axis": axis}
    # The branch meant is the one reached (checked on the first step, from the reference).
    want_view = None if branch == "none" else branch
    assert decide(p0, grads[0], delta=hp.get("delta", 0.1), eps=1e-8, channel_axis=axis).view == (
        want_view
    )
    want = reference_trajectory(name, p0, grads, **hp)
    with jax.enable_x64(True):
        got = run_jax(name, p0, grads, **hp)
    for (gp, gs), (wp, ws) in zip(got, want, strict=True):
        assert gp.dtype == np.float64
        assert_close(gp, wp, RTOL_F64)
        assert_state_equal(name, gs, ws, RTOL_F64)


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
@pytest.mark.parametrize("shape", [(5,), (), (0, 3), (2, 0, 4)], ids=str)
def test_float64_ineligible_shapes_equal_reference(name, shape):
    """D4: 0-D and 1-D leaves are never projected; zero-size leaves are updated to nothing."""
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(3)]
    hp = {"lr": 0.1, "weight_decay": 0.1, "channel_axis": 0}
    if name == "sgdp":
        hp["momentum"] = 0.9
    want = reference_trajectory(name, p0, grads, **hp)
    with jax.enable_x64(True):
        got = run_jax(name, p0, grads, **hp)
    for (gp, gs), (wp, ws) in zip(got, want, strict=True):
        assert gp.shape == wp.shape
        assert_close(gp, wp, RTOL_F64)
        assert_state_equal(name, gs, ws, RTOL_F64)


@pytest.mark.parametrize("shape,axis", LAYOUTS, ids=str)
@pytest.mark.parametrize("branch", ["channel", "layer", "none"])
def test_decide_equals_reference(shape, axis, branch):
    rng = np.random.default_rng(3)
    p = rng.standard_normal(shape)
    g = branch_gradient(p, rng, branch, channel_axis=axis)
    want = decide(p, g, delta=0.1, eps=1e-8, channel_axis=axis).view
    with jax.enable_x64(True):
        code = adamp_jax.decide({"w": p}, {"w": g}, channel_axis=axis)["w"]
    assert adamp_jax.VIEWS[int(code)] == want


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
@pytest.mark.parametrize("branch", ["channel", "layer", "none"])
def test_bfloat16_params_follow_reference_in_float32(name, branch):
    """D9: bfloat16 params are computed in float32 with float32 state and stored in bfloat16.

    The reference does the same; the two float32 computations round differently in the last
    bits, which can move a bfloat16 result by one unit in the last place (2**-8 relative).
    The update itself comes back in bfloat16, as optax's do, and ``apply_updates`` adds the
    rounded update. That adds, per step, up to half a bfloat16 spacing of the update (2**-9
    of its magnitude; allowed: 2**-8 of the reference's largest step, summed over the steps),
    which matters for entries that have come near zero; and ``p + u`` then lands on the other
    side of a rounding boundary of ``p`` now and then, one more spacing of ``p`` that later
    steps carry along (measured: at most 2 spacings, 2**-7 relative at 0.075, in 2 of 288
    entries; allowed: 2**-6 relative).
    """
    rng = np.random.default_rng(11)
    p0 = rng.standard_normal((3, 3, 4, 8)).astype(jnp.bfloat16)
    grads = [
        branch_gradient(p0.astype(np.float64), rng, branch, channel_axis=-1).astype(jnp.bfloat16)
        for _ in range(STEPS)
    ]
    hp = {"lr": 1e-2, "weight_decay": 0.1, "channel_axis": -1}
    if name == "sgdp":
        hp["momentum"] = 0.9
    want = reference_trajectory(name, p0, grads, **hp)
    got = run_jax(name, p0, grads, **hp)
    prev, update_rounding = p0.astype(np.float64), 0.0
    for (gp, gs), (wp, ws) in zip(got, want, strict=True):
        assert gp.dtype == jnp.bfloat16
        for leaf in jax.tree.leaves(gs):
            assert leaf.dtype in (jnp.float32, jnp.int32)
        update_rounding += 2**-8 * np.max(np.abs(wp.astype(np.float64) - prev))
        prev = wp.astype(np.float64)
        np.testing.assert_allclose(
            gp.astype(np.float32), wp.astype(np.float32), rtol=2**-6, atol=1e-6 + update_rounding
        )
        assert_state_equal(name, gs, ws, 1e-4)
