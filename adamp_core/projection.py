r"""The projection Pi (P1-P5): detect a scale-invariant weight, remove the radial update.

A weight is taken as scale-invariant when its gradient is (nearly) orthogonal to it, row by row
(channel view) or as a whole (layer view). For random directions in n dimensions
``|cos| ~ 1/sqrt(n)``, hence the threshold ``delta / sqrt(n)`` (P3): with ``delta = 0.1`` a
random gradient passes the layer test about 8% of the time (``P(|N(0,1)| < 0.1)``), and the
channel test, a maximum over many rows, almost never.

The decision depends on ``param`` and ``grad`` only (not on the update), so ``decide`` can be
called alone: the conformance suite uses its margins to recognise near-ties.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from adamp_core._arrays import as_float_array, compute_dtype
from adamp_core._hyperparams import check_channel_axis, check_grad_shape

VIEWS = ("channel", "layer")  # D3: tried in this order, the first that fires wins


class Margins(NamedTuple):
    """``max_i cos_i - delta / sqrt(n)`` per view; a view fires iff its margin is < 0.

    ``inf`` for a parameter that is not tested (ndim <= 1 or zero-size, D4).
    """

    channel: float
    layer: float


class Decision(NamedTuple):
    """Which view fired (``"channel"``, ``"layer"`` or None) and the margins of both tests."""

    view: str | None
    margins: Margins


class Projection(NamedTuple):
    """The result of Pi: projected update, weight-decay factor r (P5), view and margins."""

    update: np.ndarray
    r: float
    view: str | None
    margins: Margins


def rows(x: np.ndarray, view: str, channel_axis: int) -> np.ndarray:
    """(P1) The 2-D view: ``(C, -1)`` along ``channel_axis`` ("channel"), ``(1, -1)`` ("layer")."""
    if view == "channel":
        return np.moveaxis(x, channel_axis, 0).reshape(x.shape[channel_axis], -1)
    return x.reshape(1, -1)


def unrows(r: np.ndarray, like: np.ndarray, view: str, channel_axis: int) -> np.ndarray:
    """Inverse of ``rows``: back to the layout of ``like``."""
    if view == "channel":
        return np.moveaxis(r.reshape(np.moveaxis(like, channel_axis, 0).shape), 0, channel_axis)
    return r.reshape(like.shape)


def row_norm(x: np.ndarray) -> np.ndarray:
    """Euclidean norm of each row."""
    return np.sqrt(np.sum(x * x, axis=1))


def cosine(g: np.ndarray, p: np.ndarray, eps: float) -> np.ndarray:
    """(P2), D1 and D2: ``|<g_i, p_i>| / (max(|g_i|, eps) * max(|p_i|, eps))`` per row."""
    dot = np.sum(g * p, axis=1)
    return np.abs(dot) / (np.maximum(row_norm(g), eps) * np.maximum(row_norm(p), eps))


def margin(g: np.ndarray, p: np.ndarray, eps: float, delta: float) -> float:
    """(P3) ``max_i cos_i - delta / sqrt(n)`` on 2-D rows; the view fires iff this is < 0."""
    return float(np.max(cosine(g, p, eps)) - delta / math.sqrt(p.shape[1]))


def _eligible(shape: tuple[int, ...]) -> bool:
    return len(shape) >= 2 and math.prod(shape) > 0  # D4


def decide(param, grad, *, delta: float, eps: float, channel_axis: int = 0) -> Decision:
    """(P1-P3) Decides which view, if any, treats ``param`` as scale-invariant.

    Args:
      param: the weight, any floating dtype (computed in float64 if float64, else float32).
      grad: its raw gradient, same shape.
      delta: the threshold constant of (P3).
      eps: the guard of (P2).
      channel_axis: the output-channel axis of the layout (D3); negative values count from the end.

    Returns:
      ``Decision(view, margins)``.
    """
    p = as_float_array(param, "param")
    g = as_float_array(grad, "grad")
    check_grad_shape(p.shape, g.shape)
    axis = check_channel_axis(channel_axis, p.shape)
    if not _eligible(p.shape):
        return Decision(None, Margins(math.inf, math.inf))
    dt = compute_dtype(p.dtype)
    p, g = p.astype(dt, copy=False), g.astype(dt, copy=False)
    m = Margins(*(margin(rows(g, v, axis), rows(p, v, axis), eps, delta) for v in VIEWS))
    fired = next((v for v, mv in zip(VIEWS, m, strict=True) if mv < 0), None)
    return Decision(fired, m)


def project(p: np.ndarray, u: np.ndarray, eps: float) -> np.ndarray:
    """(P4) On 2-D rows: ``u_i - p_hat_i <p_hat_i, u_i>`` with ``p_hat_i = p_i / (|p_i| + eps)``."""
    p_hat = p / (row_norm(p) + eps)[:, None]
    return u - p_hat * np.sum(p_hat * u, axis=1)[:, None]


def projection(
    param, grad, update, *, delta: float, wd_ratio: float, eps: float, channel_axis: int = 0
) -> Projection:
    """(P1-P5) Projects ``update`` when ``param`` is detected as scale-invariant.

    Args:
      param: the weight before the step.
      grad: the raw gradient (the detection uses it, not the update).
      update: the direction to project (Adam's ``m/den`` or SGD's momentum buffer).
      delta, wd_ratio, eps: hyperparameters of (P2)-(P5).
      channel_axis: output-channel axis (D3).

    Returns:
      ``Projection(update, r, view, margins)``: the (possibly) projected update in the dtype of
      ``update``, ``r = wd_ratio`` if a view fired else 1, the view and both margins.

    Examples:
      >>> import numpy as np
      >>> p = np.array([[3.0, 4.0]]); g = np.array([[4.0, -3.0]])  # g orthogonal to p
      >>> out = projection(p, g, np.array([[3.0, 4.0]]), delta=0.1, wd_ratio=0.1, eps=1e-8)
      >>> out.view, float(np.abs(out.update).max()) < 1e-7
      ('channel', True)
    """
    u = as_float_array(update, "update")
    check_grad_shape(np.shape(param), u.shape)
    decision = decide(param, grad, delta=delta, eps=eps, channel_axis=channel_axis)
    if decision.view is None:
        return Projection(u.copy(), 1.0, None, decision.margins)  # (P5) r = 1
    axis = check_channel_axis(channel_axis, u.shape)
    dt = compute_dtype(u.dtype)
    p = np.asarray(param).astype(dt, copy=False)
    projected = project(rows(p, decision.view, axis), rows(u.astype(dt), decision.view, axis), eps)
    new_u = unrows(projected, u, decision.view, axis).astype(u.dtype)
    return Projection(new_u, float(wd_ratio), decision.view, decision.margins)
