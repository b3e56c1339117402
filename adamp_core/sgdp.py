"""SGDP (S1-S6): SGD with momentum whose update loses its radial part on scale-invariant weights."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from adamp_core._arrays import as_float_array, compute_dtype, prepare
from adamp_core._hyperparams import validate_hyperparameters
from adamp_core.projection import projection


class SGDPState(NamedTuple):
    """SGDP state. The official package stores the buffer under the key ``momentum``."""

    momentum_buffer: np.ndarray


def sgdp_init(param) -> SGDPState:
    """A zero buffer in the compute dtype of ``param`` (D9); (S1) starts from it."""
    p = as_float_array(param, "param")
    return SGDPState(np.zeros(p.shape, compute_dtype(p.dtype)))


def sgdp_step(
    param,
    grad,
    state: SGDPState,
    *,
    lr: float,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    eps: float = 1e-8,
    delta: float = 0.1,
    wd_ratio: float = 0.1,
    project_buffer: bool = False,
    channel_axis: int = 0,
) -> tuple[np.ndarray, SGDPState]:
    r"""One SGDP step, (S1)-(S6). Pure: ``param``, ``grad`` and ``state`` are not written.

    Args:
      param: the parameter, any floating dtype; the result has the same dtype.
      grad: its gradient, same shape.
      state: from ``sgdp_init`` or a previous step.
      lr: learning rate (required, as in the official package).
      momentum, dampening, nesterov: as in ``torch.optim.SGD``, except that the buffer starts at
        zero, so the first step is ``(1 - dampening) g`` (official).
      weight_decay: multiplicative decay, divided by ``1 - momentum`` (D7).
      eps, delta, wd_ratio: of the projection (P2)-(P5).
      project_buffer: store the projected direction as the buffer, as the official code does in
        place when nesterov is off (D6). Default False follows the paper.
      channel_axis: output-channel axis of ``param``'s layout (D3).

    Returns:
      ``(new_param, new_state)``.

    Examples:
      >>> import numpy as np
      >>> p = np.ones((2, 3)); s = sgdp_init(p)
      >>> p1, s1 = sgdp_step(p, np.full((2, 3), 0.5), s, lr=0.1, momentum=0.9)
      >>> float(s1.momentum_buffer[0, 0])
      0.5

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
      Weights", ICLR 2021, Algorithm 1.
    """
    validate_hyperparameters(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
        eps=eps,
        delta=delta,
        wd_ratio=wd_ratio,
        project_buffer=project_buffer,
    )
    dtype, p, g, dt = prepare(param, grad, state, channel_axis)  # D9: computed in dt

    b = state.momentum_buffer.astype(dt, copy=False) * momentum + (1 - dampening) * g  # S1
    u = g + momentum * b if nesterov else b  # S2
    r = 1.0
    if p.ndim >= 2:  # S3, D4
        u, r, _, _ = projection(
            p, g, u, delta=delta, wd_ratio=wd_ratio, eps=eps, channel_axis=channel_axis
        )
    if weight_decay > 0:  # S4, D7: official divides by (1 - momentum)
        p = p * (1 - lr * weight_decay * r / (1 - momentum))
    p = p - lr * u  # S5
    stored = u if project_buffer and not nesterov else b  # S6, D6
    return p.astype(dtype), SGDPState(stored)
