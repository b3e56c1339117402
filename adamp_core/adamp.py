"""AdamP (A1-A8): Adam whose update loses its radial part on scale-invariant weights."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from adamp_core._arrays import as_float_array, compute_dtype, prepare
from adamp_core._hyperparams import validate_hyperparameters
from adamp_core.projection import projection


class AdamPState(NamedTuple):
    """AdamP state; field names are the official PyTorch state keys."""

    step: int
    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray


def adamp_init(param) -> AdamPState:
    """Zero moments in the compute dtype of ``param`` (float32 for float16/bfloat16, D9)."""
    p = as_float_array(param, "param")
    dt = compute_dtype(p.dtype)
    return AdamPState(0, np.zeros(p.shape, dt), np.zeros(p.shape, dt))


def update_moment(moment: np.ndarray, value: np.ndarray, decay: float) -> np.ndarray:
    """(A2), (A3): ``decay * moment + (1 - decay) * value``."""
    return moment * decay + (1 - decay) * value


def bias_correction(decay: float, t: int) -> float:
    """``1 - decay^t``."""
    return 1 - decay**t


def adamp_step(
    param,
    grad,
    state: AdamPState,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    nesterov: bool = False,
    channel_axis: int = 0,
) -> tuple[np.ndarray, AdamPState]:
    r"""One AdamP step, (A1)-(A8). Pure: ``param``, ``grad`` and ``state`` are not written.

    Args:
      param: the parameter, any floating dtype; the result has the same dtype.
      grad: its gradient, same shape.
      state: from ``adamp_init`` or a previous step.
      lr, betas, eps, weight_decay: as in ``torch.optim.AdamW`` (decay is multiplicative, D7).
      delta: detection threshold constant of (P3).
      wd_ratio: weight-decay factor r applied on projected steps (P5).
      nesterov: use ``b1 m + (1 - b1) g`` as the numerator (A5).
      channel_axis: output-channel axis of ``param``'s layout (D3); 0 is PyTorch's.

    Returns:
      ``(new_param, new_state)``.

    Examples:
      >>> import numpy as np
      >>> p = np.ones((2, 3)); s = adamp_init(p)
      >>> p1, s1 = adamp_step(p, np.full((2, 3), 0.5), s, lr=0.1)
      >>> s1.step, p1.dtype
      (1, dtype('float64'))

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
      Weights", ICLR 2021, Algorithm 2.
    """
    validate_hyperparameters(
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        delta=delta,
        wd_ratio=wd_ratio,
        nesterov=nesterov,
    )
    dtype, p, g, dt = prepare(param, grad, state, channel_axis)  # D9: computed in dt
    b1, b2 = betas

    t = state.step + 1  # A1
    m = update_moment(state.exp_avg.astype(dt, copy=False), g, b1)  # A2
    v = update_moment(state.exp_avg_sq.astype(dt, copy=False), g * g, b2)  # A3
    den = np.sqrt(v) / np.sqrt(bias_correction(b2, t)) + eps  # A4, D5: eps after correction
    u = (b1 * m + (1 - b1) * g) / den if nesterov else m / den  # A5, D5: updated m
    r = 1.0
    if p.ndim >= 2:  # A6, D4
        u, r, _, _ = projection(
            p, g, u, delta=delta, wd_ratio=wd_ratio, eps=eps, channel_axis=channel_axis
        )
    if weight_decay > 0:  # A7, D7: decay from the parameter before the step
        p = p * (1 - lr * weight_decay * r)
    p = p - (lr / bias_correction(b1, t)) * u  # A8
    return p.astype(dtype), AdamPState(t, m, v)
