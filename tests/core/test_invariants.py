"""Invariants of the reference, checked with hypothesis: identities rather than snapshots.

Decision labels (D1-D10) are those of docs/algorithm.md, section 6.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from adamp_core import adamp_init, adamp_step, decide, projection, sgdp_init, sgdp_step
from adamp_core.testing import BRANCHES, branch_gradient

settings.register_profile("core", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("core")

shapes = st.lists(st.integers(1, 5), min_size=2, max_size=4).map(tuple)
seeds = st.integers(0, 2**32 - 1)
branches = st.sampled_from(BRANCHES)
TIE = 1e-9  # decisions closer than this to the threshold are near-ties; rounding may flip them


def draw(shape, seed, branch, channel_axis=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape)
    return p, branch_gradient(p, rng, branch, channel_axis=channel_axis)


def clear_of_ties(d) -> bool:
    return all(abs(m) > TIE for m in d.margins)


@given(shapes, seeds, branches, st.floats(1e-3, 1e3))
def test_scaling_weight_keeps_decision(shape, seed, branch, c):
    p, g = draw(shape, seed, branch)
    d = decide(p, g, delta=0.1, eps=1e-8)
    assume(clear_of_ties(d) and np.min(np.abs(p)) > 0)
    assert decide(c * p, g, delta=0.1, eps=1e-8).view == d.view


@given(shapes, seeds, branches)
def test_permuting_channels_permutes_result(shape, seed, branch):
    p, g = draw(shape, seed, branch)
    perm = np.random.default_rng(seed).permutation(shape[0])
    p1, s1 = adamp_step(p, g, adamp_init(p), lr=0.1, weight_decay=0.1)
    p2, s2 = adamp_step(p[perm], g[perm], adamp_init(p), lr=0.1, weight_decay=0.1)
    np.testing.assert_allclose(p2, p1[perm], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(s2.exp_avg, s1.exp_avg[perm], rtol=1e-12, atol=0)


@given(shapes, seeds, branches, st.data())
def test_moving_channel_axis(shape, seed, branch, data):
    """Move the channel axis to position k and pass channel_axis=k (or k - ndim): same result."""
    p, g = draw(shape, seed, branch)
    k = data.draw(st.integers(0, len(shape) - 1), label="k")
    axis = data.draw(st.sampled_from([k, k - len(shape)]), label="channel_axis")
    pm, gm = np.moveaxis(p, 0, k), np.moveaxis(g, 0, k)
    for init, step, hp in [
        (adamp_init, adamp_step, dict(lr=0.1, weight_decay=0.1, nesterov=True)),
        (sgdp_init, sgdp_step, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
    ]:
        p0, _ = step(p, g, init(p), **hp)
        p1, _ = step(pm, gm, init(pm), channel_axis=axis, **hp)
        np.testing.assert_allclose(p1, np.moveaxis(p0, 0, k), rtol=1e-12, atol=1e-15)


def torch_adamw_trajectory(p, grads, lr, betas, eps, wd):
    """``torch.optim.AdamW`` on one float64 tensor: the named external Adam with decoupled decay."""
    t = torch.nn.Parameter(torch.tensor(p))
    opt = torch.optim.AdamW([t], lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    out = []
    for g in grads:
        t.grad = torch.tensor(g)
        opt.step()
        out.append(t.detach().numpy().copy())
    return out


@given(st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple), seeds, branches)
def test_delta_zero_is_adamw(shape, seed, branch):
    """delta = 0 never projects (P3 is strict), so AdamP is torch.optim.AdamW (D5, D7)."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape)
    grads = [
        branch_gradient(p, rng, branch) if len(shape) >= 2 else rng.standard_normal(shape)
        for _ in range(4)
    ]
    hp = dict(lr=0.05, betas=(0.8, 0.99), eps=1e-8)
    expected = torch_adamw_trajectory(p, grads, hp["lr"], hp["betas"], hp["eps"], 0.2)
    state, q = adamp_init(p), p
    for g, e in zip(grads, expected, strict=True):
        assert decide(q, g, delta=0.0, eps=1e-8).view is None
        q, state = adamp_step(q, g, state, delta=0.0, weight_decay=0.2, **hp)
        np.testing.assert_allclose(q, e, rtol=1e-12, atol=1e-15)


@given(shapes, seeds)
def test_projected_update_is_orthogonal_row_wise(shape, seed):
    """With weight_decay = 0 the step of a channel-projected weight is orthogonal to each row.

    P4 uses p_hat = p / (|p| + eps), so <p_i, step_i> = <p_i, u_i> (1 - |p_i|^2/(|p_i| + eps)^2),
    about 2 eps/|p_i| of the unprojected inner product: with eps = 1e-8 and |p_i| >= 0.1 that is
    below 2e-7 relative. The bound 1e-6 leaves room for rounding.
    """
    p, g = draw(shape, seed, "channel")
    assume(np.min(np.linalg.norm(p.reshape(shape[0], -1), axis=1)) > 0.1)
    out = projection(p, g, g + p, delta=0.1, wd_ratio=0.1, eps=1e-8)
    assert out.view == "channel"
    for ui, pi in zip(out.update.reshape(shape[0], -1), p.reshape(shape[0], -1), strict=True):
        assert abs(ui @ pi) <= 1e-6 * np.linalg.norm(ui + pi) * np.linalg.norm(pi)
    p1, _ = sgdp_step(p, g, sgdp_init(p), lr=0.1, momentum=0.9)
    for di, pi in zip((p1 - p).reshape(shape[0], -1), p.reshape(shape[0], -1), strict=True):
        assert abs(di @ pi) <= 1e-6 * max(np.linalg.norm(di), 1e-300) * np.linalg.norm(pi)


@given(st.lists(st.integers(0, 6), min_size=0, max_size=1).map(tuple), seeds)
def test_ndim_at_most_one_is_never_projected(shape, seed):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape)
    g = np.zeros(shape)  # an all-zero gradient would fire on an eligible weight (D4)
    d = decide(p, g, delta=0.1, eps=1e-8)
    assert d.view is None and d.margins == (np.inf, np.inf)
    out = projection(p, g, g + 1.0, delta=0.1, wd_ratio=0.5, eps=1e-8)
    assert out.r == 1.0
    np.testing.assert_array_equal(out.update, g + 1.0)


def test_wd_ratio_applies_only_when_projected():
    """Hand derivation: with a zero update (g = 0 at t = 1 makes m = 0) only decay moves p.

    SGDP with mu = 0: p1 = p (1 - lr wd r) - lr * 0 with r = wd_ratio if a view fired else 1.
    """
    rng = np.random.default_rng(3)
    p = rng.standard_normal((4, 6))
    g = np.zeros_like(p)  # cos = 0: fires on the channel view (D4)
    p1, _ = sgdp_step(p, g, sgdp_init(p), lr=0.1, weight_decay=0.5, wd_ratio=0.2)
    np.testing.assert_allclose(p1, p * (1 - 0.1 * 0.5 * 0.2), rtol=1e-15)
    p2, _ = sgdp_step(p, g, sgdp_init(p), lr=0.1, weight_decay=0.5, wd_ratio=0.2, delta=0.0)
    np.testing.assert_allclose(p2, p * (1 - 0.1 * 0.5 * 1.0), rtol=1e-15)
