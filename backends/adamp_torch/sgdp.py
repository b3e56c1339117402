r"""SGDP for PyTorch: (S1)-(S6) in torch ops (multi-tensor, free of host synchronisation) or,
on CPUs, in the C step of ``_native``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import required

from adamp_torch import _kernel, _native
from adamp_torch._base import ProjectionOptimizer, zeros_state


class SGDP(ProjectionOptimizer):
    r"""SGDP (Heo et al., ICLR 2021): SGD with momentum whose update loses its radial part on
    weights detected as scale-invariant.

    .. math::
       \begin{aligned}
       &b_t = \mu b_{t-1} + (1 - \tau) g_t \quad (b_0 = 0), \qquad
        u_t = g_t + \mu b_t \text{ (nesterov) or } b_t \\
       &u_t, r = \Pi(p, g_t, u_t) \quad (\text{projection; } r = \text{wd\_ratio}
        \text{ if it fired, else } 1) \\
       &p \leftarrow p\,(1 - \eta\,\lambda\,r / (1 - \mu)) - \eta\, u_t
       \end{aligned}

    Same positional arguments and defaults as the official ``adamp.SGDP`` 0.3.0; the buffer is
    stored under its state key ``momentum``, so its state dicts (and timm's) load unchanged.

    Args:
      params: parameters or param groups.
      lr: learning rate, a float or a tensor; required, as in the official package, unless
        every param group sets its own (PyTorch's ``required``: a group left without one
        raises ``ValueError``).
      momentum: momentum factor ``mu``.
      dampening: dampening ``tau`` of the buffer update.
      weight_decay: multiplicative decay, divided by ``1 - momentum`` (D7, as official).
      nesterov: Nesterov momentum (needs momentum > 0 and dampening 0).
      eps, delta, wd_ratio: of the projection (P2)-(P5).
      project_buffer: store the projected direction as the buffer, as the official package
        does in place when nesterov is off (D6). Default False follows the paper.
      channel_axis: output-channel axis of the weights' layout (D3); 0 for PyTorch.
      impl: which implementation steps a param group (settable per group): ``"native"``, the
        C step (CPU tensors, contiguous or channels_last, channel axis 0), ``"foreach"``, torch
        ops (every device and layout), or None (default) for the first of these that can take
        the group; docs/torch.md has the table. A named one that cannot take a group raises.

    Examples:
      >>> import torch
      >>> from adamp_torch import SGDP
      >>> model = torch.nn.Linear(3, 2)
      >>> opt = SGDP(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
      >>> model(torch.ones(1, 3)).sum().backward()
      >>> opt.step()

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
      Weights", ICLR 2021, Algorithm 1.
    """

    _state_keys = ("momentum",)
    _hyper = (
        "lr",
        "momentum",
        "dampening",
        "weight_decay",
        "nesterov",
        "eps",
        "delta",
        "wd_ratio",
        "project_buffer",
    )

    def __init__(
        self,
        params: Iterable,
        lr: float | Tensor = required,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        eps: float = 1e-8,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        *,
        project_buffer: bool = False,
        channel_axis: int = 0,
        impl: str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            weight_decay=weight_decay,
            nesterov=nesterov,
            eps=eps,
            delta=delta,
            wd_ratio=wd_ratio,
            project_buffer=project_buffer,
            channel_axis=channel_axis,
            impl=impl,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        state["momentum"] = zeros_state(p)

    def _native_update(self, group, ps, gs, states):
        buf = [s["momentum"] for s in states]
        return _native.sgdp_step(group, ps, gs, buf)  # S1-S6, _native.c

    def _update_bucket(self, group, layout, ps, gs, states):
        mu, damp, wd = group["momentum"], group["dampening"], group["weight_decay"]
        buf = [_kernel.local(s["momentum"]) for s in states]
        device = ps[0].device
        lr = _kernel.as_device_scalar(group["lr"], device)
        # Under torch.compile the row sums and per-row factors are plain expressions, with no
        # out= and no writes into the layout's buffers: the same step time within 3%, a third
        # less compile time (docs/benchmarks.md). Sharded buckets reduce in the layout's buffer.
        compiled = torch.compiler.is_compiling() and not layout.shard_groups

        def per_row(x: Tensor, slot: int = 0) -> list[Tensor]:
            return _kernel.rows_of(layout, x) if compiled else _kernel.per_row(layout, x, slot)

        # The elementwise steps stay torch._foreach_* calls under compile too: per-tensor
        # in-place ops on 0-d float64 tensors lose their update under Inductor on CPU (2.13).
        torch._foreach_mul_(buf, mu)  # S1, in the official operation order (D8)
        torch._foreach_add_(buf, gs, alpha=1 - damp)
        u = torch._foreach_add(gs, buf, alpha=mu) if group["nesterov"] else buf  # S2
        # S3: projection as a per-row scale s
        stats = None
        if compiled:
            stats = _kernel.squared_row_sums(layout, ps, gs, u)
        else:  # the products go one tensor at a time into one buffer, still in cache
            cache = self._work if device.type == "cpu" else None  # kept between steps on CPUs
            scratch = _kernel.flat_buffers(ps, overlap=True, cache=cache, slot=1)
            _kernel.row_sums(layout, ps, gs, u, scratch)
            del scratch
        proj = _kernel.projection(
            layout, delta=group["delta"], eps=group["eps"], wd_ratio=group["wd_ratio"], stats=stats
        )
        decay = 1 - lr * wd * proj.r / (1 - mu)  # S4, D7: divided by (1 - momentum)
        if group["project_buffer"] and not group["nesterov"]:
            # S6, D6: the official code projects the buffer in place; u is the buffer here
            torch._foreach_addcmul_(buf, ps, per_row(proj.s, slot=1), value=-1)
            factor = decay[layout.seg]
        else:  # u is left as is; S4 + S5 as p * (1 - lr wd r / (1 - mu) + lr s) - lr u
            factor = decay[layout.seg] + lr * proj.s
        torch._foreach_mul_(ps, per_row(factor))
        if isinstance(lr, Tensor):  # S5
            torch._foreach_addcmul_(ps, u, [-lr] * len(ps))
        else:
            torch._foreach_add_(ps, u, alpha=-lr)
        return proj.views
