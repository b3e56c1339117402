"""The projection Pi (P1-P5) for one array, traceable: the branch is chosen with ``jnp.where``.

Both views reduce over every axis except the channel axis, so the channel view needs no
transpose, and the layer view's sums are the sums of the channel view's sums: one pass over
``(p, g, u)`` gives every dot product the decision and the projection need.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from adamp_core import check_channel_axis

# Codes of the per-leaf decision: VIEWS[code] is the reference's ``Decision.view``.
VIEWS = (None, "channel", "layer")
NONE, CHANNEL, LAYER = 0, 1, 2


def compute_dtype(dtype) -> jnp.dtype:
    """D9: float64 stays float64 (float32 when x64 is off, as JAX holds it), every other
    floating or integer dtype is computed in float32."""
    if jnp.dtype(dtype) == jnp.float64:
        return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))
    return jnp.dtype(jnp.float32)


def eligible(shape: tuple[int, ...]) -> bool:
    """D4: only parameters with ``ndim >= 2`` and at least one element are tested."""
    return len(shape) >= 2 and math.prod(shape) > 0


def static_axis(channel_axis, shape: tuple[int, ...]) -> int | None:
    """The axis as a Python int in ``[0, ndim)``, or None when it is a traced value.

    ``optax.inject_hyperparams`` turns an int argument into an array, traced under ``jit``.
    """
    if isinstance(channel_axis, jax.core.Tracer):
        return None
    if isinstance(channel_axis, (jax.Array, np.ndarray)):
        if channel_axis.ndim != 0 or not jnp.issubdtype(channel_axis.dtype, jnp.integer):
            raise ValueError(f"channel_axis must be an integer (got {channel_axis!r})")
        channel_axis = int(channel_axis)
    return check_channel_axis(channel_axis, shape)


def _norm(sq):
    return jnp.sqrt(sq)


def _decide(gp, gg, pp, shape, axis, eps, delta):
    """(P2), (P3) from the channel sums; returns the view code and the layer sums."""
    size = math.prod(shape)
    gp_l, gg_l, pp_l = jnp.sum(gp), jnp.sum(gg), jnp.sum(pp)
    cos_c = jnp.abs(gp) / (jnp.maximum(_norm(gg), eps) * jnp.maximum(_norm(pp), eps))  # P2, D1
    cos_l = jnp.abs(gp_l) / (jnp.maximum(_norm(gg_l), eps) * jnp.maximum(_norm(pp_l), eps))
    fire_c = jnp.max(cos_c) < delta / math.sqrt(size // shape[axis])  # P3, strict
    fire_l = cos_l < delta / math.sqrt(size)
    view = jnp.where(fire_c, CHANNEL, jnp.where(fire_l, LAYER, NONE))  # D3: channel first
    return view.astype(jnp.int32), pp_l


def _sums(a, b, axis):
    red = tuple(i for i in range(a.ndim) if i != axis)
    return jnp.sum(a * b, axis=red, keepdims=True)


def _project_static(p, g, u, eps, delta, wd_ratio, axis):
    # The barrier keeps XLA from rewriting the layer sums (sums of these) into second full-size
    # reductions, which would read every array twice more.
    gp, gg, pp, pu = jax.lax.optimization_barrier(
        (_sums(g, p, axis), _sums(g, g, axis), _sums(p, p, axis), _sums(p, u, axis))
    )
    view, pp_l = _decide(gp, gg, pp, p.shape, axis, eps, delta)
    # P4 with p_hat = p / (|p| + eps) over the fired view's rows, where |p| + eps is constant:
    # p_hat <p_hat, u> = p * <p, u> / (|p| + eps)^2. Both branches are finite: |p| + eps > 0.
    denom = jnp.where(view == CHANNEL, _norm(pp) + eps, _norm(pp_l) + eps)
    coef = jnp.where(view == CHANNEL, pu, jnp.sum(pu)) / (denom * denom)
    fired = view != NONE
    u = jnp.where(fired, u - p * coef, u)
    r = jnp.where(fired, wd_ratio, 1.0)  # P5
    return u, r, view


def project(p, g, u, *, eps, delta, wd_ratio, channel_axis):
    """(P1-P5) Returns ``(u, r, view)``; ``u`` and ``r`` in ``u``'s dtype, ``view`` an int32 code.

    ``p``, ``g``, ``u`` share one shape and one floating dtype. Ineligible shapes (D4) return
    ``u`` unchanged and ``r = 1``.
    """
    if not eligible(p.shape):
        return u, jnp.ones((), u.dtype), jnp.zeros((), jnp.int32)
    axis = static_axis(channel_axis, p.shape)
    if axis is None:  # traced axis: one branch per possible axis, only the selected one runs
        branches = [
            lambda ops, a=a: _project_static(*ops, eps, delta, wd_ratio, a) for a in range(p.ndim)
        ]
        u, r, view = jax.lax.switch(jnp.asarray(channel_axis) % p.ndim, branches, (p, g, u))
    else:
        u, r, view = _project_static(p, g, u, eps, delta, wd_ratio, axis)
    return u, jnp.asarray(r, u.dtype), view


def decide_leaf(p, g, dtype, *, eps, delta, channel_axis):
    """(P1-P3) The view code of one array of ``dtype``: 0 none, 1 channel, 2 layer."""
    dt = compute_dtype(dtype)
    p, g = p.astype(dt), g.astype(dt)
    return project(p, g, g, eps=eps, delta=delta, wd_ratio=1.0, channel_axis=channel_axis)[2]
