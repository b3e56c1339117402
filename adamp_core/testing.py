"""Gradient constructors that reach each branch of the projection on purpose.

Random Gaussian gradients reach the layer view about 8% of the time and the channel view almost
never, so tests, the conformance suite and the demonstration build gradients with a known
relation to the weight, as a scale-invariant layer's gradient has (orthogonal to its weight).
"""

from __future__ import annotations

import numpy as np

from adamp_core.projection import rows, unrows

BRANCHES = ("channel", "layer", "none")


def _rowwise(param: np.ndarray, channel_axis: int, fn) -> np.ndarray:
    p = np.asarray(param, dtype=np.float64)
    axis = channel_axis % p.ndim
    return unrows(fn(rows(p, "channel", axis)), p, "channel", axis)


def _remove_along(z: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per row: z_i - p_i <p_i, z_i> / |p_i|^2 (rows with p_i = 0 are left alone)."""
    pp = np.sum(p * p, axis=1)
    coef = np.divide(np.sum(p * z, axis=1), pp, out=np.zeros_like(pp), where=pp > 0)
    return z - p * coef[:, None]


def branch_gradient(
    param, rng: np.random.Generator, branch: str, *, channel_axis: int = 0
) -> np.ndarray:
    """A float64 gradient for ``param`` (ndim >= 2) meant to reach ``branch``.

    Args:
      param: the weight.
      rng: a NumPy generator; the gradient is drawn from it.
      branch: ``"channel"``: orthogonal to every row (a scale-invariant layer's gradient);
        ``"layer"``: orthogonal to the weight as a whole, but each row strongly aligned with its
        weight row (needs at least two channels; with one, channel and layer views coincide);
        ``"none"``: every row and the whole aligned with the weight (|cos| about 0.7).
      channel_axis: output-channel axis of the layout.

    Returns:
      The gradient; the reference's ``decide`` tells which view it actually reaches.
    """
    p = np.asarray(param, dtype=np.float64)
    z = rng.standard_normal(p.shape)
    if branch == "channel":
        zr = rows(z, "channel", channel_axis % p.ndim)
        return _rowwise(p, channel_axis, lambda pr: _remove_along(zr, pr))
    if branch == "none":
        scale = np.linalg.norm(z) / max(np.linalg.norm(p), 1e-300)
        return z + scale * p
    if branch == "layer":

        def fn(pr: np.ndarray) -> np.ndarray:
            zr = rows(z, "channel", channel_axis % p.ndim)
            zr = _remove_along(zr, pr)
            # Rows alternately aligned and anti-aligned with their weight row, each with the
            # weight of its own norm, then the overall component removed: the whole is
            # orthogonal while each row keeps a large |cos|.
            sign = np.where(np.arange(pr.shape[0]) % 2 == 0, 1.0, -1.0)
            zn = np.linalg.norm(zr, axis=1) / np.maximum(np.linalg.norm(pr, axis=1), 1e-300)
            g = zr + (sign * zn)[:, None] * pr
            flat = g.reshape(1, -1)
            return _remove_along(flat, pr.reshape(1, -1)).reshape(g.shape)

        return _rowwise(p, channel_axis, fn)
    raise ValueError(f"branch must be one of {BRANCHES} (got {branch!r})")


def rel_err(a, b) -> float:
    """``max |a - b| / max |b|`` over the whole array (0 for two empty arrays).

    Relative to the array's scale rather than elementwise: an entry that is a difference of
    near-equal terms (a moment after a sign change of g) carries the rounding of the terms.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def reference_trajectory(
    optimizer: str, param, grads, **hyperparams
) -> list[tuple[np.ndarray, tuple]]:
    """Runs the reference over ``grads`` and returns ``(param, state)`` after every step.

    Args:
      optimizer: ``"adamp"`` or ``"sgdp"``.
      param: the initial parameter.
      grads: a sequence of gradients, one per step.
      **hyperparams: keyword hyperparameters of ``adamp_step`` / ``sgdp_step``.
    """
    from adamp_core.adamp import adamp_init, adamp_step
    from adamp_core.sgdp import sgdp_init, sgdp_step

    init, step = {"adamp": (adamp_init, adamp_step), "sgdp": (sgdp_init, sgdp_step)}[optimizer]
    p, state, out = np.asarray(param), init(param), []
    for g in grads:
        p, state = step(p, g, state, **hyperparams)
        out.append((p, state))
    return out
