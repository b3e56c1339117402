"""Part 2: the paper's norm-growth identities, checked step by step on a random problem.

For a scale-invariant loss the gradient is orthogonal to the weight, and (docs/algorithm.md,
sections 1 and 2; Heo et al. 2021, Sec. 3):

    plain GD        |w_{t+1}|^2 = |w_t|^2 + lr^2 |g_t|^2
    heavy ball      |w_{t+1}|^2 = |w_t|^2 + lr^2 |p_t|^2 + 2 lr^2 sum_{k<t} beta^(t-k) |p_k|^2
    projected       |w_{t+1}|^2 = |w_t|^2 + lr^2 |Pi(p_t)|^2

with ``p`` the momentum buffer (the step direction). Derivation of the middle one:
``<w_t, p_t> = beta <w_t, p_{t-1}>`` since ``<w_t, g_t> = 0``, and
``<w_t, p_{t-1}> = <w_{t-1}, p_{t-1}> - lr |p_{t-1}|^2``, so
``<w_t, p_t> = -lr sum_{k<t} beta^(t-k) |p_k|^2`` and
``|w_{t+1}|^2 = |w_t|^2 - 2 lr <w_t, p_t> + lr^2 |p_t|^2``. With equal step norms the sum tends
to ``beta / (1 - beta) |p|^2``, so momentum grows |w|^2 ``(1 + beta) / (1 - beta)`` times as fast
as a GD step of the same length.

The problem: least squares on row-normalised weights, ``L_B(W) = mean_{j in B} (a_j . vec(W_hat)
- y_j)^2 / 2`` with ``W_hat_i = W_i / |W_i|`` (per-row scale invariance, as a convolution filter
followed by BatchNorm), random ``a_j``, targets independent of the inputs (pure gradient noise,
so the step statistics are stationary), minibatches of 32, and a small learning rate so that
|w| barely changes while the ratio settles. Decision labels (D6) are those of docs/algorithm.md.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from adamp_core import projection, sgdp_init, sgdp_step

SHAPE = (8, 16)  # 8 "filters" of 16 weights
N_DATA, BATCH = 4096, 32
LR = 1e-3
EPS = 1e-8
BETAS = (0.9, 0.95, 0.99)


class Problem(NamedTuple):
    a: np.ndarray
    y: np.ndarray
    w0: np.ndarray
    batches: np.ndarray


def make_problem(steps: int, seed: int = 0) -> Problem:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((N_DATA, SHAPE[0] * SHAPE[1]))
    y = rng.standard_normal(N_DATA)
    w0 = rng.standard_normal(SHAPE)
    batches = np.stack([rng.choice(N_DATA, BATCH, replace=False) for _ in range(steps)])
    return Problem(a, y, w0, batches)


def grad(prob: Problem, w: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Chain rule through ``W_hat_i = W_i / |W_i|``.

    ``g_i = (h_i - W_hat_i <W_hat_i, h_i>) / |W_i|`` with ``h = dL/dW_hat``: orthogonal to W_i.
    """
    n = np.linalg.norm(w, axis=1, keepdims=True)
    wh = w / n
    r = prob.a[idx] @ wh.ravel() - prob.y[idx]
    h = (prob.a[idx].T @ r / len(idx)).reshape(SHAPE)
    return (h - wh * np.sum(wh * h, axis=1, keepdims=True)) / n


class Run(NamedTuple):
    """Per step: |w_t|^2, the growth |w_{t+1}|^2 - |w_t|^2, the identity's right-hand side,
    and ``lr^2 |p_t|^2`` (the growth a GD step of the same length would give)."""

    norm2: np.ndarray
    growth: np.ndarray
    predicted: np.ndarray
    step2: np.ndarray

    @property
    def max_residual(self) -> float:
        """``max_t |growth - predicted| / predicted``."""
        return float(np.max(np.abs(self.growth - self.predicted) / self.predicted))

    def ratio(self, start: int) -> float:
        """``sum growth / sum lr^2 |p_t|^2`` over steps ``>= start``."""
        return float(self.growth[start:].sum() / self.step2[start:].sum())


def run(prob: Problem, momentum: float, delta: float) -> Run:
    """SGD through ``sgdp_step``: ``delta = 0`` never projects (P3 needs ``max cos < 0``)."""
    w, state = prob.w0.copy(), sgdp_init(prob.w0)
    # tail_t = sum_{k<t} beta^(t-k) |p_k|^2, by the recursion beta (tail_{t-1} + |p_{t-1}|^2)
    tail = 0.0
    last = 0.0
    rows = []
    for idx in prob.batches:
        g = grad(prob, w, idx)
        w1, state = sgdp_step(w, g, state, lr=LR, momentum=momentum, delta=delta)
        p = state.momentum_buffer  # D6: the stored buffer is the unprojected p_t
        p2 = float(np.sum(p * p))
        if delta > 0:
            pi = projection(w, g, p, delta=delta, wd_ratio=0.1, eps=EPS).update
            predicted = LR**2 * float(np.sum(pi * pi))
        else:
            tail = momentum * (tail + last)
            predicted = LR**2 * (p2 + 2 * tail)
        last = p2
        # (a - b)(a + b) avoids the cancellation of |w1|^2 - |w|^2 when the growth is tiny
        growth = float(np.sum((w1 - w) * (w1 + w)))
        rows.append((float(np.sum(w * w)), growth, predicted, LR**2 * p2))
        w = w1
    return Run(*map(np.array, zip(*rows, strict=True)))


def plot(runs: dict[str, Run], path) -> None:
    """|w|^2 against step, and the per-step growth ratio against (1 + beta) / (1 - beta)."""
    import matplotlib.pyplot as plt

    fig, (an, ar) = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.get_cmap("tab10")
    for i, (name, r) in enumerate(runs.items()):
        style = dict(color=colors(i), lw=1.2, ls="-" if name.startswith("SGDP") else "--")
        an.plot(r.norm2, label=name, **style)
        ar.plot(r.growth / r.step2, label=name, **style)
    steps = len(next(iter(runs.values())).growth)
    for b in BETAS:
        ar.axhline((1 + b) / (1 - b), color="0.3", lw=0.8, ls=":")
        ar.text(0.7 * steps, (1 + b) / (1 - b) * 1.08, f"(1+b)/(1-b), b={b}", fontsize=8)
    an.set_title("|w|^2 against step (random scale-invariant problem)")
    ar.set_title("growth |w_{t+1}|^2 - |w_t|^2 over lr^2 |p_t|^2")
    ar.set_yscale("log")
    for a in (an, ar):
        a.set_xlabel("step")
        a.legend(fontsize=7, loc="center left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
