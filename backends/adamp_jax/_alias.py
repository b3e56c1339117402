"""``adamp`` and ``sgdp``: the building blocks chained with the learning rate, optax style."""

import math

import jax
import optax

from adamp_jax._transform import ChannelAxis, Mask, _adamp, _sgdp, cast_to_params


def _check_learning_rate(learning_rate: optax.ScalarOrSchedule) -> None:
    """A learning rate may be negative (a step up the gradient), as in optax; a concrete
    NaN or infinity is rejected, since every step would then be NaN or infinite."""
    if callable(learning_rate) or isinstance(learning_rate, jax.core.Tracer):
        return
    try:
        if isinstance(learning_rate, (str, bytes)):
            raise TypeError
        finite = math.isfinite(float(learning_rate))
    except (TypeError, ValueError):
        raise ValueError(
            f"learning_rate must be a real number or a schedule (got {learning_rate!r})"
        ) from None
    if not finite:
        raise ValueError(f"learning_rate must be finite (got {learning_rate!r})")


def adamp(
    learning_rate: optax.ScalarOrSchedule,
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
) -> optax.GradientTransformationExtraArgs:
    r"""AdamP (Heo et al., 2021): Adam without the radial update on scale-invariant weights.

    Per leaf ``p`` of ``ndim >= 2``: if the gradient is nearly orthogonal to every output
    channel of ``p`` (or to ``p`` as a whole), the update loses its component along ``p`` and
    the weight decay is scaled by ``wd_ratio``; otherwise this is AdamW with multiplicative
    decay. The equations (A1-A8, P1-P5) are those of ``adamp_core``.

    Args:
      learning_rate: a float or an ``optax.Schedule``; negative values step up the gradient,
        as in optax.
      b1, b2, eps, weight_decay, delta, wd_ratio, nesterov: see ``scale_by_adamp``; the
        defaults are the official package's.
      channel_axis: output-channel axis (D3): -1 for Flax and Haiku kernels (None, the
        default, means -1), 0 for Equinox; an int, a pytree of ints matching the params, or a
        callable ``(path, leaf) -> int``.
      mask: which leaves get weight decay, as in ``optax.add_decayed_weights``.
      mu_dtype: dtype of the first moment, as in ``optax.adam`` (None: float32, or float64
        for float64 params).

    Returns:
      ``optax.chain(scale_by_adamp(...), optax.scale_by_learning_rate(learning_rate))``, with
      the updates rounded to each param's dtype after the learning rate rather than before
      (a float16 direction can overflow where the step does not). Its ``update`` requires
      ``params``.

    Examples:
      >>> import jax.numpy as jnp, optax, adamp_jax
      >>> params = {"w": jnp.ones((3, 4))}
      >>> opt = adamp_jax.adamp(1e-3, weight_decay=1e-2)
      >>> state = opt.init(params)
      >>> updates, state = opt.update({"w": jnp.full((3, 4), 0.5)}, state, params)
      >>> params = optax.apply_updates(params, updates)

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
      Weights", ICLR 2021 (arXiv:2006.08217), Algorithm 2.
    """
    _check_learning_rate(learning_rate)
    return optax.chain(
        _adamp(
            b1,
            b2,
            eps,
            weight_decay,
            delta,
            wd_ratio,
            nesterov,
            channel_axis=channel_axis,
            mask=mask,
            mu_dtype=mu_dtype,
            cast_updates=False,
        ),
        optax.scale_by_learning_rate(learning_rate),
        cast_to_params(),
    )


def sgdp(
    learning_rate: optax.ScalarOrSchedule,
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
) -> optax.GradientTransformationExtraArgs:
    r"""SGDP (Heo et al., 2021): SGD with momentum without the radial update on
    scale-invariant weights.

    Args:
      learning_rate: a float or an ``optax.Schedule``, as in ``adamp``.
      momentum, dampening, weight_decay, nesterov, eps, delta, wd_ratio, project_buffer: see
        ``scale_by_sgdp``; the defaults are the official package's.
      channel_axis: output-channel axis (D3), as in ``adamp``.
      mask: which leaves get weight decay, as in ``optax.add_decayed_weights``.
      accumulator_dtype: dtype of the momentum buffer, as in ``optax.sgd`` (None: float32,
        or float64 for float64 params).

    Returns:
      ``optax.chain(scale_by_sgdp(...), optax.scale_by_learning_rate(learning_rate))``, rounded
      to the params' dtypes as in ``adamp``. Its ``update`` requires ``params``.

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
      Weights", ICLR 2021 (arXiv:2006.08217), Algorithm 1.
    """
    _check_learning_rate(learning_rate)
    return optax.chain(
        _sgdp(
            momentum,
            dampening,
            weight_decay,
            nesterov,
            eps,
            delta,
            wd_ratio,
            project_buffer=project_buffer,
            channel_axis=channel_axis,
            mask=mask,
            accumulator_dtype=accumulator_dtype,
            cast_updates=False,
        ),
        optax.scale_by_learning_rate(learning_rate),
        cast_to_params(),
    )
