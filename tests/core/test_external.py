"""The reference against external implementations, float64, multi-step, all three branches.

- The official package (PyPI ``adamp`` 0.3.0, MIT): AdamP plain and nesterov; SGDP with
  ``project_buffer=True`` (its in-place buffer projection, D6) and SGDP nesterov with our default
  (with nesterov the official direction is a fresh tensor, so its buffer is never projected).
- pytorch-optimizer 4.1.0's SGDP, which copies the buffer as the paper does: our default SGDP.
  (Its AdamP adds eps before bias correction, D5, so it is no reference for AdamP.)

Each step's gradient is built from the reference's current weight to reach a chosen branch, and
the branch actually reached is taken from ``adamp_core.decide`` and counted. Decision labels
(D1-D10) are those of docs/algorithm.md, section 6.
"""

from __future__ import annotations

import zlib

import adamp
import numpy as np
import pytest
import pytorch_optimizer

from adamp_core import decide
from adamp_core.testing import BRANCHES, branch_gradient, reference_trajectory, rel_err

from ._official import torch_trajectory

SHAPES = [(4, 3), (6, 5), (3, 4, 5), (8, 4, 3, 3), (1, 7), (2, 1, 3), (5, 1)]
STEPS = 5
TOL = 1e-12  # relative error bound asked of the reference (a few ulps of agreement, D8)

ADAMP_CASES = {
    "adamp-default": dict(lr=0.01),
    "adamp-decay": dict(lr=0.05, betas=(0.8, 0.99), weight_decay=0.1, wd_ratio=0.5, delta=0.2),
    "adamp-nesterov": dict(lr=0.02, nesterov=True, weight_decay=0.01, eps=1e-6),
    "adamp-nesterov-decay": dict(lr=0.1, betas=(0.5, 0.9), nesterov=True, weight_decay=0.3),
}
SGDP_OFFICIAL_CASES = {
    "sgdp-plain": dict(lr=0.1, project_buffer=True),
    "sgdp-momentum": dict(lr=0.1, momentum=0.9, weight_decay=0.01, project_buffer=True),
    "sgdp-dampening": dict(lr=0.05, momentum=0.5, dampening=0.3, wd_ratio=0.3, project_buffer=True),
    "sgdp-nesterov-default": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
}
SGDP_PAPER_CASES = {
    "sgdp-momentum": dict(lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgdp-dampening": dict(lr=0.05, momentum=0.5, dampening=0.3, wd_ratio=0.3, delta=0.2),
    "sgdp-nesterov": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
}
ADAMP_KEYS = ("step", "exp_avg", "exp_avg_sq")


def branch_grads(optimizer, param, branch, seed, hp):
    """Gradients reaching ``branch`` at every step of the reference trajectory, and their views."""
    rng = np.random.default_rng(seed)
    p, grads, views = param, [], []
    for _ in range(STEPS):
        g = branch_gradient(p, rng, branch)
        grads.append(g)
        views.append(decide(p, g, delta=hp.get("delta", 0.1), eps=hp.get("eps", 1e-8)).view)
        p = reference_trajectory(optimizer, param, grads, **hp)[-1][0]  # the next step's weight
    return grads, views


def cases(table):
    return [
        pytest.param(name, shape, branch, id=f"{name}-{'x'.join(map(str, shape))}-{branch}")
        for name in table
        for shape in SHAPES
        for branch in BRANCHES
    ]


def _run(optimizer, ours_hp, ext_cls, ext_hp, state_map, shape, branch, target, branch_counts):
    seed = zlib.crc32(repr((optimizer, shape, branch, target)).encode())
    param = np.random.default_rng(seed).standard_normal(shape)
    grads, views = branch_grads(optimizer, param, branch, seed + 1, ours_hp)
    ref = reference_trajectory(optimizer, param, grads, **ours_hp)
    ext = torch_trajectory(ext_cls, param, grads, list(state_map.values()), **ext_hp)
    for t, ((p_ref, s_ref), (p_ext, s_ext)) in enumerate(zip(ref, ext, strict=True)):
        assert rel_err(p_ref, p_ext) <= TOL, f"param differs at step {t + 1}"
        for ours, theirs in state_map.items():
            err = rel_err(getattr(s_ref, ours), s_ext[theirs])
            assert err <= TOL, f"state {ours} differs at step {t + 1}: {err:.3g}"
    for v in views:
        branch_counts[(target, v)] += 1


@pytest.mark.parametrize(("name", "shape", "branch"), cases(ADAMP_CASES))
def test_adamp_matches_official(name, shape, branch, branch_counts):
    hp = ADAMP_CASES[name]
    state_map = {k: k for k in ADAMP_KEYS}
    _run("adamp", hp, adamp.AdamP, hp, state_map, shape, branch, "official AdamP", branch_counts)


@pytest.mark.parametrize(("name", "shape", "branch"), cases(SGDP_OFFICIAL_CASES))
def test_sgdp_matches_official(name, shape, branch, branch_counts):
    hp = SGDP_OFFICIAL_CASES[name]
    ext_hp = {k: v for k, v in hp.items() if k != "project_buffer"}
    state_map = {"momentum_buffer": "momentum"}
    _run("sgdp", hp, adamp.SGDP, ext_hp, state_map, shape, branch, "official SGDP", branch_counts)


@pytest.mark.parametrize(("name", "shape", "branch"), cases(SGDP_PAPER_CASES))
def test_sgdp_matches_pytorch_optimizer(name, shape, branch, branch_counts):
    hp = SGDP_PAPER_CASES[name]
    state_map = {"momentum_buffer": "momentum"}
    _run(
        "sgdp",
        hp,
        pytorch_optimizer.SGDP,
        hp,
        state_map,
        shape,
        branch,
        "pytorch-optimizer SGDP",
        branch_counts,
    )


def test_every_branch_reached(branch_counts):
    """Runs last in this module: each external target was compared on all three branches."""
    targets = {t for t, _ in branch_counts}
    if not targets:
        pytest.skip("no comparison ran in this session (deselected)")
    for target in targets:
        for view in ("channel", "layer", None):
            assert branch_counts[(target, view)] > 0, (target, view)
