"""Deliberately wrong implementations: the suite must catch every one (``test_mutants.py``).

Each mutant is the NumPy reference's algorithm, rewritten here step by step with exactly one
change, run through ``NumpyDriver``. The unchanged rewrite (``MUTANTS`` has no entry for it;
``MutantDriver(None)``) must pass: that shows the rewrite itself is faithful, so a caught mutant
is caught for its change. Most changes are bugs seen in real ports (named where so).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from adamp_core import AdamPState, SGDPState
from adamp_core.projection import VIEWS, rows, unrows

from .drivers.numpy_driver import NumpyDriver


class Mutant(NamedTuple):
    description: str
    scenarios: tuple[str, ...]  # each must catch it


_BOTH = ("adamp", "sgdp-paper-buffer")
MUTANTS: dict[str, Mutant] = {
    "no-abs": Mutant("cosine without the absolute value (the paper's equation, D2)", _BOTH),
    "no-sqrt": Mutant("threshold delta / n instead of delta / sqrt(n)", _BOTH),
    "axis-swapped": Mutant("channel rows taken along another axis than channel_axis (D3)", _BOTH),
    "layer-first": Mutant("layer view tried before the channel view (D3)", _BOTH),
    "less-or-equal": Mutant("a view fires when max cos <= threshold, not < (P3)", _BOTH),
    "decide-on-update": Mutant("the decision uses the update instead of the gradient", _BOTH),
    "unnormalised-projection": Mutant("u - p <p, u> without normalising p (P4)", _BOTH),
    "projects-1d": Mutant("1-D parameters are projected too (D4)", _BOTH),
    "r-ignored": Mutant("weight decay ignores r (decided before the projection)", _BOTH),
    "r-always": Mutant("weight decay always uses wd_ratio", _BOTH),
    "decay-after-step": Mutant("weight decay applied after the step (D7)", _BOTH),
    "eps-before-bias-correction": Mutant(
        "(sqrt(v) + eps) / sqrt(1 - b2^t), as pytorch-optimizer 3.10+ (D5)", ("adamp",)
    ),
    "nesterov-unnormalised": Mutant(
        "nesterov b1 m + (1 - b1) g / den, as pytorch-optimizer 2.2.1-3.11 (D5)", ("adamp",)
    ),
    "nesterov-old-moment": Mutant("nesterov numerator from the moment before (A2)", ("adamp",)),
    "bias-correction-off-by-one": Mutant("1 - b1^(t+1) in the step size (A8)", ("adamp",)),
    "no-bias-correction-2": Mutant("den = sqrt(v) + eps, no second correction (A4)", ("adamp",)),
    "sgdp-decay-without-momentum-factor": Mutant(
        "SGDP decay without 1 / (1 - momentum), as one Keras port (D7)", ("sgdp-paper-buffer",)
    ),
    "sgdp-buffer-starts-at-gradient": Mutant(
        "first buffer = g, as torch.optim.SGD, not (1 - dampening) g (S1)", ("sgdp-paper-buffer",)
    ),
    "sgdp-buffer-projected": Mutant(
        "the stored buffer is always the projected one (D6)", ("sgdp-paper-buffer",)
    ),
    "sgdp-project-buffer-ignored": Mutant(
        "project_buffer=True stores the unprojected buffer (D6)", ("sgdp-projected-buffer",)
    ),
}


def _cos(g: np.ndarray, p: np.ndarray, eps: float, m: str | None) -> np.ndarray:
    dot = np.sum(g * p, axis=1)
    den = np.maximum(np.linalg.norm(g, axis=1), eps) * np.maximum(np.linalg.norm(p, axis=1), eps)
    return (dot if m == "no-abs" else np.abs(dot)) / den


def _project(p, g, u, *, delta, wd_ratio, eps, axis, m):
    """Pi with the mutation ``m``; returns (u, r)."""
    if p.ndim < (1 if m == "projects-1d" else 2) or p.size == 0:
        return u, (wd_ratio if m == "r-always" else 1.0)
    if p.ndim == 1:
        p, g, u, shape = p[None], g[None], u[None], p.shape
    else:
        shape = None
    ax = axis % p.ndim
    if m == "axis-swapped":
        ax = (p.ndim - 1 - ax) if p.ndim - 1 - ax != ax else (ax + 1) % p.ndim
    probe = u if m == "decide-on-update" else g
    for view in reversed(VIEWS) if m == "layer-first" else VIEWS:
        pr, gr = rows(p, view, ax), rows(probe, view, ax)
        n = pr.shape[1]
        cos = float(np.max(_cos(gr, pr, eps, m)))
        thr = delta / (n if m == "no-sqrt" else math.sqrt(n))
        if cos <= thr if m == "less-or-equal" else cos < thr:
            ur = rows(u, view, ax)
            if m == "unnormalised-projection":
                p_hat = pr
            else:
                p_hat = pr / (np.linalg.norm(pr, axis=1) + eps)[:, None]
            ur = ur - p_hat * np.sum(p_hat * ur, axis=1)[:, None]
            out = unrows(ur, u, view, ax)
            return (out.reshape(shape) if shape else out), wd_ratio
    return (u.reshape(shape) if shape else u), (wd_ratio if m == "r-always" else 1.0)


def _decay(p, lr, wd, r, m):
    return p * (1 - lr * wd * (1.0 if m == "r-ignored" else r)) if wd > 0 else p


def adamp_step(p, g, state, *, channel_axis, m, **hp):
    lr, (b1, b2), eps = hp["lr"], hp["betas"], hp["eps"]
    weight_decay, delta, wd_ratio, nesterov = (
        hp["weight_decay"],
        hp["delta"],
        hp["wd_ratio"],
        hp["nesterov"],
    )
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    t = state.step + 1
    m_old = state.exp_avg
    mom = b1 * state.exp_avg + (1 - b1) * g
    v = b2 * state.exp_avg_sq + (1 - b2) * g * g
    bc2 = 1.0 if m == "no-bias-correction-2" else 1 - b2**t
    if m == "eps-before-bias-correction":
        den = (np.sqrt(v) + eps) / math.sqrt(bc2)
    else:
        den = np.sqrt(v) / math.sqrt(bc2) + eps
    if not nesterov:
        u = mom / den
    elif m == "nesterov-unnormalised":
        u = b1 * mom + (1 - b1) * g / den
    elif m == "nesterov-old-moment":
        u = (b1 * m_old + (1 - b1) * g) / den
    else:
        u = (b1 * mom + (1 - b1) * g) / den
    u, r = _project(p, g, u, delta=delta, wd_ratio=wd_ratio, eps=eps, axis=channel_axis, m=m)
    step = lr / (1 - b1 ** (t + 1 if m == "bias-correction-off-by-one" else t))
    if m == "decay-after-step":
        p = _decay(p - step * u, lr, weight_decay, r, m)
    else:
        p = _decay(p, lr, weight_decay, r, m) - step * u
    return p, AdamPState(t, mom, v)


def sgdp_step(p, g, state, *, channel_axis, m, **hp):
    lr, momentum, dampening = hp["lr"], hp["momentum"], hp["dampening"]
    weight_decay, nesterov, eps = hp["weight_decay"], hp["nesterov"], hp["eps"]
    delta, wd_ratio, project_buffer = hp["delta"], hp["wd_ratio"], hp["project_buffer"]
    p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
    first = m == "sgdp-buffer-starts-at-gradient" and not np.any(state.momentum_buffer)
    b = g if first else momentum * state.momentum_buffer + (1 - dampening) * g
    u = g + momentum * b if nesterov else b
    u, r = _project(p, g, u, delta=delta, wd_ratio=wd_ratio, eps=eps, axis=channel_axis, m=m)
    factor = 1.0 if m == "sgdp-decay-without-momentum-factor" else 1 / (1 - momentum)
    if m == "decay-after-step":
        p = _decay(p - lr * u, lr, weight_decay * factor, r, m)
    else:
        p = _decay(p, lr, weight_decay * factor, r, m) - lr * u
    store_projected = project_buffer and not nesterov
    if m == "sgdp-buffer-projected":
        store_projected = not nesterov
    elif m == "sgdp-project-buffer-ignored":
        store_projected = False
    return p, SGDPState(u if store_projected else b)


class MutantDriver(NumpyDriver):
    """The rewrite with mutation ``m`` (None: unchanged); float64 only."""

    def __init__(self, m: str | None) -> None:
        if m is not None and m not in MUTANTS:
            raise ValueError(f"unknown mutant {m!r}; choose one of: {', '.join(MUTANTS)}")
        self.m = m
        self.name = f"mutant {m}"

    def dtypes(self) -> tuple[str, ...]:
        return ("float64",)

    def adamp_step(self, p, g, state, **hp):
        return adamp_step(p, g, state, m=self.m, **hp)

    def sgdp_step(self, p, g, state, **hp):
        return sgdp_step(p, g, state, m=self.m, **hp)
