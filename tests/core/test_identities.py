"""The paper's norm-growth identities, exact in float64 for a scale-invariant loss.

Loss: L(w) = 1/2 |w/|w| - e|^2 for a fixed unit vector e. It is scale-invariant, so its gradient
(I - u u^T) (u - e) / |w| with u = w/|w| is orthogonal to w (up to rounding).

Derivations (docs/algorithm.md, sections 1-3; Heo et al. 2021, Sec. 2):
- plain GD: w' = w - lr g with <w, g> = 0, so |w'|^2 = |w|^2 + lr^2 |g|^2.
- heavy ball, p_t = g_t + beta p_{t-1}: a_t = <w_t, p_t> satisfies a_0 = 0 and
  a_t = beta (a_{t-1} - lr |p_{t-1}|^2), so a_t = -lr sum_{k<t} beta^(t-k) |p_k|^2 and
  |w_{t+1}|^2 = |w_t|^2 + lr^2 |p_t|^2 + 2 lr^2 sum_{k<t} beta^(t-k) |p_k|^2.
- projected (SGDP): the step Pi(p_t) is orthogonal to w_t, so
  |w_{t+1}|^2 = |w_t|^2 + lr^2 |Pi(p_t)|^2.
  Pi uses p_hat = w/(|w| + eps); with eps = 1e-300 the "+ eps" vanishes in float64 and the
  identity is exact up to rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

from adamp_core import sgdp_init, sgdp_step

LR, STEPS = 0.1, 60
RTOL = 1e-12


def grad_scale_invariant(w: np.ndarray, e: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(w)
    u = w / n
    d = u - e
    return (d - u * np.dot(u.ravel(), d.ravel())) / n


def run(beta: float, delta: float, eps: float = 1e-8):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((1, 16))  # one row: channel and layer views coincide
    e = rng.standard_normal((1, 16))
    e /= np.linalg.norm(e)
    state = sgdp_init(w)
    ws, steps = [w], []
    for _ in range(STEPS):
        g = grad_scale_invariant(w, e)
        w_new, state = sgdp_step(w, g, state, lr=LR, momentum=beta, delta=delta, eps=eps)
        steps.append((w - w_new) / LR)  # the direction actually taken
        w = w_new
        ws.append(w)
    return ws, steps


def sq(x):
    return float(np.sum(x * x))


def test_plain_gd_norm_growth():
    ws, steps = run(beta=0.0, delta=0.0)  # delta = 0 never projects: plain GD
    for t in range(STEPS):
        expect = sq(ws[t]) + LR**2 * sq(steps[t])
        assert sq(ws[t + 1]) == pytest.approx(expect, rel=RTOL)
    assert sq(ws[-1]) > sq(ws[0]) * 1.001  # the norm does grow


@pytest.mark.parametrize("beta", [0.5, 0.9])
def test_momentum_norm_growth(beta):
    ws, steps = run(beta=beta, delta=0.0)
    for t in range(STEPS):
        acc = sum(beta ** (t - k) * sq(steps[k]) for k in range(t))
        expect = sq(ws[t]) + LR**2 * sq(steps[t]) + 2 * LR**2 * acc
        assert sq(ws[t + 1]) == pytest.approx(expect, rel=RTOL)


@pytest.mark.parametrize("beta", [0.0, 0.9])
def test_projected_norm_growth(beta):
    ws, steps = run(beta=beta, delta=0.1, eps=1e-300)
    for t in range(STEPS):
        expect = sq(ws[t]) + LR**2 * sq(steps[t])
        assert sq(ws[t + 1]) == pytest.approx(expect, rel=RTOL)


def test_projection_slows_norm_growth():
    """With momentum 0.9 the projected run grows the norm far less than heavy ball."""
    heavy, _ = run(beta=0.9, delta=0.0)
    projected, _ = run(beta=0.9, delta=0.1)
    growth_heavy = sq(heavy[-1]) - sq(heavy[0])
    growth_proj = sq(projected[-1]) - sq(projected[0])
    assert growth_proj < 0.5 * growth_heavy
