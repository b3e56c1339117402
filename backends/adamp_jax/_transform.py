"""``scale_by_adamp`` and ``scale_by_sgdp``: the optax building blocks, one leaf at a time.

Each returns the direction whose negative times the learning rate is the step, as optax's
``scale_by_adam`` does; the decoupled weight decay (A7, S4) is inside, because its factor r
depends on the projection outcome (P5). Equation labels are those of ``adamp_core``.
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from adamp_core import check_grad_shape, validate_hyperparameters
from adamp_jax._projection import compute_dtype, decide_leaf, project
from adamp_jax._tree import channel_axes, decay_mask, is_placeholder, leaf_dtypes

# Not ``from __future__ import annotations``: optax and its users read these signatures with
# ``inspect.signature`` and compare annotations to ``optax.ScalarOrSchedule`` (strings would not
# compare equal).
ChannelAxis = int | Any | Callable[[tuple, jax.Array], int] | None
Mask = Any | Callable[[optax.Params], Any] | None

# D3: the output-channel axis of Flax and Haiku kernels, used when ``channel_axis`` is None. The
# default is None rather than -1 so that ``optax.inject_hyperparams`` leaves it static.
DEFAULT_CHANNEL_AXIS = -1

# optax's state names -> the PyTorch state keys of ``adamp_torch`` and the official package, for
# converting checkpoints (``adamp_core`` calls SGDP's buffer ``momentum_buffer``).
TORCH_STATE_NAMES = {"count": "step", "mu": "exp_avg", "nu": "exp_avg_sq", "trace": "momentum"}


class ScaleByAdamPState(NamedTuple):
    """AdamP state, named as ``optax.ScaleByAdamState``.

    ``mu`` is in ``mu_dtype`` (default: float32 for float32/float16/bfloat16 params, float64
    for float64 ones, D9); ``nu`` is always in that compute dtype.
    """

    count: jax.Array  # int32, the number of steps taken (A1); PyTorch's ``step``
    mu: optax.Updates  # first moment m (A2); PyTorch's ``exp_avg``
    nu: optax.Updates  # second moment v (A3); PyTorch's ``exp_avg_sq``


class ScaleBySGDPState(NamedTuple):
    """SGDP state, named as ``optax.TraceState``: the momentum buffer (S1) in
    ``accumulator_dtype`` (default: the compute dtype, as ``mu`` of ``ScaleByAdamPState``)."""

    trace: optax.Updates  # PyTorch's ``momentum`` (official SGDP, adamp_torch)


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


def _zeros(params: optax.Params, dtype: Any = None) -> optax.Updates:
    """``jnp.zeros_like`` per leaf, so the state has each param's sharding (and works on
    ``jax.ShapeDtypeStruct``); the dtype is ``dtype`` or the leaf's compute dtype (D9)."""

    def zeros(p):
        dt = compute_dtype(leaf_dtypes(p)[0]) if dtype is None else dtype
        return jnp.zeros_like(p, dtype=jax.dtypes.canonicalize_dtype(dt))

    return jax.tree.map(zeros, params)


def _state_dtype(name: str, dtype: Any) -> Any:
    """Checks ``mu_dtype`` / ``accumulator_dtype``: None or a real floating dtype."""
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"{name} must be None or a floating dtype (got {dtype!r})") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"{name} must be None or a real floating dtype (got {dt})")
    return dt


def _leaves(treedef, tree: Any, name: str) -> list:
    try:
        return treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name} does not have the structure of params: {e}") from None


def _is_zero(x: Any) -> bool:
    return isinstance(x, (int, float)) and x == 0


def _axis(channel_axis: ChannelAxis) -> Any:
    return DEFAULT_CHANNEL_AXIS if channel_axis is None else channel_axis


def _check_params(params: optax.Params, channel_axis: ChannelAxis, mask: Mask) -> None:
    """What ``init`` checks: leaf dtypes, ``channel_axis`` and ``mask`` against the params.

    optax's ``tree.map_params`` calls ``init`` on a placeholder object, as ``optax.masked``
    knows; there is nothing to check then.
    """
    if is_placeholder(params):
        return
    leaf_dtypes(params)
    channel_axes(_axis(channel_axis), params)
    decay_mask(mask, params)


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
    axes, masks = channel_axes(_axis(channel_axis), params), decay_mask(mask, params)
    dts = leaf_dtypes(params)
    ps, gs = [jnp.asarray(p) for p in ps], [jnp.asarray(g) for g in gs]  # Python float leaves
    out = [fn(*x) for x in zip(gs, ps, *sts, axes, masks, dts, strict=True)]
    columns = list(zip(*out, strict=True)) if out else [()] * (len(states) + 1)
    return [treedef.unflatten(c) for c in columns]


def _out_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """The update's dtype: the param's, as optax's; float for integer params (as optax's)."""
    return dtype if jnp.issubdtype(dtype, jnp.floating) else compute_dtype(dtype)


def _cast(update: jax.Array, dtype: jnp.dtype, cast: bool) -> jax.Array:
    return update.astype(_out_dtype(dtype)) if cast else update


def cast_to_params() -> optax.GradientTransformation:
    """Rounds each update to its param's dtype (``_out_dtype``); the last link of ``adamp``
    and ``sgdp``, after the learning rate."""

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("cast_to_params needs params: call update(updates, state, params)")
        treedef = jax.tree.structure(params)
        us = _leaves(treedef, updates, "updates")
        out = [u.astype(_out_dtype(d)) for u, d in zip(us, leaf_dtypes(params), strict=True)]
        return treedef.unflatten(out), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def scale_by_adamp(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    nesterov: bool = False,
    *,
    channel_axis: ChannelAxis = None,
    mask: Mask = None,
    mu_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Rescales updates by AdamP (A1-A8), without the learning rate.

    The output is ``u / (1 - b1^t) + weight_decay * r * p``, so that ``scale_by_learning_rate``
    after it gives the reference step ``p <- p (1 - lr wd r) - lr / (1 - b1^t) u``. It is
    computed in float32 for float32, float16 and bfloat16 params (float64 for float64, D9) and
    returned in the param's dtype, as optax's transformations return theirs.

    Args:
      b1, b2, eps: Adam's decay rates and epsilon, with eps added after bias correction (D5).
      weight_decay: decoupled multiplicative decay (D7), scaled by r (P5).
      delta: threshold constant of the scale-invariance test (P3).
      wd_ratio: the factor r applied to the decay on projected steps (P5).
      nesterov: use ``b1 m + (1 - b1) g`` as the numerator (A5).
      channel_axis: output-channel axis (D3): an int for every leaf, a pytree of ints matching
        the params, or a callable ``(path, leaf) -> int``. None means -1, the Flax and Haiku
        layout (None, unlike an int, is never injected by ``optax.inject_hyperparams``).
      mask: where weight decay applies, as in ``optax.add_decayed_weights``: a pytree of bools
        (or a prefix of the params) or a callable returning one from the params.
      mu_dtype: dtype of the first moment ``mu``, as in ``optax.adam``; None keeps it in the
        compute dtype. The second moment ``nu`` always stays in the compute dtype.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``.
    """
    return _adamp(**locals(), cast_updates=True)  # locals(): exactly the arguments


def _adamp(
    b1,
    b2,
    eps,
    weight_decay,
    delta,
    wd_ratio,
    nesterov,
    *,
    channel_axis,
    mask,
    mu_dtype,
    cast_updates,
) -> optax.GradientTransformation:
    """``scale_by_adamp``; with ``cast_updates=False`` the updates stay in the compute dtype,
    for ``adamp`` to round them after the learning rate (a float16 direction can overflow
    where the step does not)."""
    validate(
        {"betas[0]": "b1", "betas[1]": "b2"},
        betas=(b1, b2),
        eps=eps,
        weight_decay=weight_decay,
        delta=delta,
        wd_ratio=wd_ratio,
        nesterov=nesterov,
    )
    mu_dtype = _state_dtype("mu_dtype", mu_dtype)

    def init_fn(params):
        _check_params(params, channel_axis, mask)
        return ScaleByAdamPState(jnp.zeros([], jnp.int32), _zeros(params, mu_dtype), _zeros(params))

    def leaf(t, g, p, m0, v0, axis, decay, dtype):
        dt = compute_dtype(dtype)  # D9
        g, p = g.astype(dt), p.astype(dt)
        tf = t.astype(dt)
        # A2, rounded to mu_dtype (a no-op by default): the m the step uses is the m stored, and
        # XLA keeps no float32 copy of it (ResNet-50 shapes, mu_dtype=bfloat16: temporaries
        # 146 -> 98 MiB, traffic 1999 -> 1804 MiB per step)
        m = (m0.astype(dt) * b1 + (1 - b1) * g).astype(m0.dtype).astype(dt)
        v = v0.astype(dt) * b2 + (1 - b2) * (g * g)  # A3
        den = jnp.sqrt(v) / jnp.sqrt(bias_correction(b2, tf)) + eps  # A4, D5: eps after it
        u = (b1 * m + (1 - b1) * g) / den if nesterov else m / den  # A5, D5: updated m
        u, r, _ = project(p, g, u, eps=eps, delta=delta, wd_ratio=wd_ratio, channel_axis=axis)
        out = u / bias_correction(b1, tf)  # A8 without -lr
        if decay and not _is_zero(weight_decay):
            out = out + (weight_decay * r) * p  # A7 without -lr; p before the step
        # the state keeps its dtypes (mu_dtype), so that jit, scan and cond see one type
        return _cast(out, dtype, cast_updates), m.astype(m0.dtype), v.astype(v0.dtype)

    def update_fn(updates, state, params=None):
        t = optax.safe_increment(state.count)  # A1
        fn = functools.partial(leaf, t)
        moments = {"mu": state.mu, "nu": state.nu}
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
    channel_axis: ChannelAxis = None,
    mask: Mask = None,
    accumulator_dtype: jax.typing.DTypeLike | None = None,
) -> optax.GradientTransformation:
    r"""Rescales updates by SGDP (S1-S6), without the learning rate.

    The output is ``u + weight_decay * r / (1 - momentum) * p``, so that
    ``scale_by_learning_rate`` after it gives ``p <- p (1 - lr wd r / (1 - mu)) - lr u``,
    computed and returned as in ``scale_by_adamp``.

    Args:
      momentum, dampening, nesterov: as in ``torch.optim.SGD``; the buffer starts at zero (S1).
      weight_decay: decoupled multiplicative decay, divided by ``1 - momentum`` (D7).
      eps, delta, wd_ratio: of the projection (P2-P5).
      project_buffer: store the projected direction as the buffer, as the official code does
        when nesterov is off (D6); default False follows the paper.
      channel_axis, mask: as in ``scale_by_adamp``.
      accumulator_dtype: dtype of the momentum buffer ``trace``, as in ``optax.sgd``; None
        keeps it in the compute dtype.

    Returns:
      An ``optax.GradientTransformation`` whose ``update`` requires ``params``.
    """
    return _sgdp(**locals(), cast_updates=True)  # locals(): exactly the arguments


def _sgdp(
    momentum,
    dampening,
    weight_decay,
    nesterov,
    eps,
    delta,
    wd_ratio,
    *,
    project_buffer,
    channel_axis,
    mask,
    accumulator_dtype,
    cast_updates,
) -> optax.GradientTransformation:
    """``scale_by_sgdp``; ``cast_updates`` as in ``_adamp``."""
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
    accumulator_dtype = _state_dtype("accumulator_dtype", accumulator_dtype)

    def init_fn(params):
        _check_params(params, channel_axis, mask)
        return ScaleBySGDPState(_zeros(params, accumulator_dtype))

    def leaf(g, p, buf, axis, decay, dtype):
        dt = compute_dtype(dtype)  # D9
        g, p = g.astype(dt), p.astype(dt)
        b = buf.astype(dt) * momentum + (1 - dampening) * g  # S1
        b = b.astype(buf.dtype).astype(dt)  # as stored (accumulator_dtype), as m in AdamP
        u = g + momentum * b if nesterov else b  # S2
        u, r, _ = project(p, g, u, eps=eps, delta=delta, wd_ratio=wd_ratio, channel_axis=axis)
        out = u  # S5 without -lr
        if decay and not _is_zero(weight_decay):
            out = out + (weight_decay * r / (1 - momentum)) * p  # S4, D7: divided by 1 - mu
        stored = u if project_buffer and not nesterov else b  # S6, D6
        return _cast(out, dtype, cast_updates), stored.astype(buf.dtype)

    def update_fn(updates, state, params=None):
        buf = {"trace": state.trace}
        u, b = _per_leaf("scale_by_sgdp", leaf, updates, params, buf, channel_axis, mask)
        return u, ScaleBySGDPState(b)

    return optax.GradientTransformation(init_fn, update_fn)


def decide(
    params: optax.Params,
    grads: optax.Updates,
    *,
    delta: float = 0.1,
    eps: float = 1e-8,
    channel_axis: ChannelAxis = None,
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

    def leaf(g, p, axis, _, dtype):
        return (decide_leaf(p, g, dtype, eps=eps, delta=delta, channel_axis=axis),)

    return _per_leaf("decide", leaf, grads, params, {}, channel_axis, None)[0]
