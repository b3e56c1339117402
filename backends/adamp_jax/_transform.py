"""``scale_by_adamp`` and ``scale_by_sgdp``: the optax building blocks, one leaf at a time.

Each returns the direction whose negative times the learning rate is the step, as optax's
``scale_by_adam`` does; the decoupled weight decay (A7, S4) is inside, because its factor r
depends on the projection outcome (P5). Equation labels are those of ``adamp_core``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamp_core import check_grad_shape, validate_hyperparameters
from adamp_jax._projection import compute_dtype, decide_leaf, project
from adamp_jax._tree import channel_axes, decay_mask

ChannelAxis = int | Any | Callable[[tuple, jax.Array], int]
Mask = Any | Callable[[optax.Params], Any] | None


class ScaleByAdamPState(NamedTuple):
    """AdamP state; field names are the official PyTorch keys, as in ``adamp_core.AdamPState``.

    ``exp_avg`` and ``exp_avg_sq`` are float32 for float16/bfloat16 params (D9).
    """

    step: jax.Array  # int32, the number of steps taken (A1)
    exp_avg: optax.Updates
    exp_avg_sq: optax.Updates


class ScaleBySGDPState(NamedTuple):
    """SGDP state: the momentum buffer (S1), float32 for float16/bfloat16 params (D9)."""

    momentum_buffer: optax.Updates


def validate(names: dict[str, str], **hp: Any) -> None:
    """``adamp_core.validate_hyperparameters`` on the concrete values; traced ones (from
    ``optax.inject_hyperparams`` under ``jit``) are checked when the optimizer is built."""
    concrete = {}
    for key, value in hp.items():
        if key == "betas":  # a traced beta is replaced by a valid stand-in, the other is checked
            value = tuple(0.5 if isinstance(b, jax.core.Tracer) else b for b in value)
        elif isinstance(value, jax.core.Tracer) or (key == "lr" and callable(value)):
            continue
        concrete[key] = value
    validate_hyperparameters(names=names, **concrete)


def bias_correction(beta, t: jax.Array) -> jax.Array:
    """``1 - beta^t`` in ``t``'s dtype, as ``-expm1(t log beta)``.

    ``1 - beta**t`` in float32 rounds ``beta`` first: with ``beta = 0.9999`` that puts up to
    ``3e-8 / 1e-4`` relative error into ``1 - beta``. Taking ``log beta`` in float64 (a Python
    number) keeps the float32 result within a few ulps of the reference's float64 value. A
    traced beta (``optax.inject_hyperparams``) is used in ``t``'s dtype.
    """
    if isinstance(beta, (int, float)):
        log_beta = jnp.asarray(math.log(beta) if beta > 0 else -math.inf, t.dtype)
    else:
        log_beta = jnp.log(jnp.asarray(beta, t.dtype))
    return -jnp.expm1(t * log_beta)


def _zeros(params: optax.Params) -> optax.Updates:
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), compute_dtype(p.dtype)), params)


def _leaves(treedef, tree: Any, name: str) -> list:
    try:
        return treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name} does not have the structure of params: {e}") from None


def _is_zero(x: Any) -> bool:
    return isinstance(x, (int, float)) and x == 0


def _per_leaf(name: str, fn: Callable, updates, params, states: dict, channel_axis, mask) -> list:
    """Applies ``fn(g, p, *state_leaves, axis, decay)`` leaf by leaf; returns one pytree per
    output of ``fn``. Every check runs before any computation."""
    if params is None:
        raise ValueError(
            f"{name} needs params: the projection and the weight decay read them; call "
            "update(updates, state, params)"
        )
    ps, treedef = jax.tree.flatten(params)
    gs = _leaves(treedef, updates, "updates")
    for g, p in zip(gs, ps, strict=True):
        check_grad_shape(jnp.shape(p), jnp.shape(g))
    sts = [_leaves(treedef, tree, f"state.{field}") for field, tree in states.items()]
    axes, masks = channel_axes(channel_axis, params), decay_mask(mask, params)
    out = [fn(*x) for x in zip(gs, ps, *sts, axes, masks, strict=True)]
    columns = list(zip(*out, strict=True)) if out else [()] * (len(states) + 1)
    return [treedef.unflatten(c) for c in columns]


def scale_by_adamp(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    nesterov: bool = False,
    *,
    channel_axis: ChannelAxis = -1,
    mask: Mask = None,
) -> optax.GradientTransformation:
    r"""Rescales updates by AdamP (A1-A8), without the learning rate.

    The output is ``u / (1 - b1^t) + weight_decay * r * p``, so that ``scale_by_learning_rate``
    after it gives the reference step ``p <- p (1 - lr wd r) - lr / (1 - b1^t) u``.

    Args:
      b1, b2, eps: Adam's decay rates and epsilon, with eps added after bias correction (D5).
      weight_decay: decoupled multiplicative decay (D7), scaled by r (P5).
      delta: threshold constant of the scale-invariance test (P3).
      wd_ratio: the factor r applied to the decay on projected steps (P5).
      nesterov: use ``b1 m + (1 - b1) g`` as the numerator (A5).
      channel_axis: output-channel axis (D3): an int for every leaf, a pytree of ints matching
        the params, or a callable ``(path, leaf) -> int``. -1 is the Flax and Haiku layout.
      mask: where weight decay applies, as in ``optax.add_decayed_weights``: a pytree of bools
        (or a prefix of the params) or a callable returning one from the params.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``.
    """
    validate(
        {"betas[0]": "b1", "betas[1]": "b2"},
        betas=(b1, b2),
        eps=eps,
        weight_decay=weight_decay,
        delta=delta,
        wd_ratio=wd_ratio,
        nesterov=nesterov,
    )

    def init_fn(params):
        channel_axes(channel_axis, params)
        decay_mask(mask, params)
        return ScaleByAdamPState(jnp.zeros([], jnp.int32), _zeros(params), _zeros(params))

    def leaf(t, g, p, m, v, axis, decay):
        dt = compute_dtype(p.dtype)  # D9
        g, p = g.astype(dt), p.astype(dt)
        tf = t.astype(dt)
        m = m * b1 + (1 - b1) * g  # A2
        v = v * b2 + (1 - b2) * (g * g)  # A3
        den = jnp.sqrt(v) / jnp.sqrt(bias_correction(b2, tf)) + eps  # A4, D5: eps after it
        u = (b1 * m + (1 - b1) * g) / den if nesterov else m / den  # A5, D5: updated m
        u, r, _ = project(p, g, u, eps=eps, delta=delta, wd_ratio=wd_ratio, channel_axis=axis)
        out = u / bias_correction(b1, tf)  # A8 without -lr
        if decay and not _is_zero(weight_decay):
            out = out + (weight_decay * r) * p  # A7 without -lr; p before the step
        return out, m, v

    def update_fn(updates, state, params=None):
        t = optax.safe_increment(state.step)  # A1
        moments = {"exp_avg": state.exp_avg, "exp_avg_sq": state.exp_avg_sq}
        fn = functools.partial(leaf, t)
        u, m, v = _per_leaf("scale_by_adamp", fn, updates, params, moments, channel_axis, mask)
        return u, ScaleByAdamPState(t, m, v)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_sgdp(
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    eps: float = 1e-8,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    *,
    project_buffer: bool = False,
    channel_axis: ChannelAxis = -1,
    mask: Mask = None,
) -> optax.GradientTransformation:
    r"""Rescales updates by SGDP (S1-S6), without the learning rate.

    The output is ``u + weight_decay * r / (1 - momentum) * p``, so that
    ``scale_by_learning_rate`` after it gives ``p <- p (1 - lr wd r / (1 - mu)) - lr u``.

    Args:
      momentum, dampening, nesterov: as in ``torch.optim.SGD``; the buffer starts at zero (S1).
      weight_decay: decoupled multiplicative decay, divided by ``1 - momentum`` (D7).
      eps, delta, wd_ratio: of the projection (P2-P5).
      project_buffer: store the projected direction as the buffer, as the official code does
        when nesterov is off (D6); default False follows the paper.
      channel_axis, mask: as in ``scale_by_adamp``.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``.
    """
    validate(
        {},
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        eps=eps,
        delta=delta,
        wd_ratio=wd_ratio,
        project_buffer=project_buffer,
    )

    def init_fn(params):
        channel_axes(channel_axis, params)
        decay_mask(mask, params)
        return ScaleBySGDPState(_zeros(params))

    def leaf(g, p, buf, axis, decay):
        dt = compute_dtype(p.dtype)  # D9
        g, p = g.astype(dt), p.astype(dt)
        b = buf * momentum + (1 - dampening) * g  # S1
        u = g + momentum * b if nesterov else b  # S2
        u, r, _ = project(p, g, u, eps=eps, delta=delta, wd_ratio=wd_ratio, channel_axis=axis)
        out = u  # S5 without -lr
        if decay and not _is_zero(weight_decay):
            out = out + (weight_decay * r / (1 - momentum)) * p  # S4, D7: divided by 1 - mu
        stored = u if project_buffer and not nesterov else b  # S6, D6
        return out, stored

    def update_fn(updates, state, params=None):
        buf = {"momentum_buffer": state.momentum_buffer}
        u, b = _per_leaf("scale_by_sgdp", leaf, updates, params, buf, channel_axis, mask)
        return u, ScaleBySGDPState(b)

    return optax.GradientTransformation(init_fn, update_fn)


def decide(
    params: optax.Params,
    grads: optax.Updates,
    *,
    delta: float = 0.1,
    eps: float = 1e-8,
    channel_axis: ChannelAxis = -1,
) -> Any:
    """(P1-P3) Which view projects each leaf, as ``scale_by_adamp`` / ``scale_by_sgdp`` decide.

    The decision reads ``(param, grad)`` only, so it is the one the optimizer takes on that
    step with the same ``delta``, ``eps`` and ``channel_axis``. Traceable.

    Returns:
      A pytree like ``params`` of int32 scalars: 0 not projected, 1 channel view, 2 layer view
      (``adamp_jax.VIEWS[code]`` is the name ``adamp_core.decide`` gives). Leaves with
      ``ndim <= 1`` or no elements are 0 (D4).
    """
    validate({}, eps=eps, delta=delta)

    def leaf(g, p, axis, _):
        return (decide_leaf(p, g, eps=eps, delta=delta, channel_axis=axis),)

    return _per_leaf("decide", leaf, grads, params, {}, channel_axis, None)[0]
