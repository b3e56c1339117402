r"""AdamP for PyTorch: (A1)-(A8) in torch ops (multi-tensor, free of host synchronisation) or,
on CPUs, in the C step of ``_native``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from adamp_torch import _kernel, _native
from adamp_torch._base import ProjectionOptimizer, zeros_state


class AdamP(ProjectionOptimizer):
    r"""AdamP (Heo et al., ICLR 2021): Adam whose update loses its radial part on weights
    detected as scale-invariant.

    .. math::
       \begin{aligned}
       &m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
       &u_t = m_t \big/ \big(\sqrt{v_t / (1-\beta_2^t)} + \epsilon\big) \\
       &u_t, r = \Pi(p, g_t, u_t) \quad (\text{projection; } r = \text{wd\_ratio}
        \text{ if it fired, else } 1) \\
       &p \leftarrow p\,(1 - \eta\,\lambda\,r) - \eta / (1-\beta_1^t)\, u_t
       \end{aligned}

    Same arguments, defaults and state keys (``step``, ``exp_avg``, ``exp_avg_sq``) as the
    official ``adamp.AdamP`` 0.3.0, so its state dicts (and timm's) load unchanged.

    Args:
      params: parameters or param groups.
      lr: learning rate, a float or a tensor (schedulers may change it between steps).
      betas: coefficients of the first and second moments.
      eps: added to the denominator (A4) and the guard of the cosine (P2).
      weight_decay: decoupled, multiplicative decay (D7).
      delta: threshold constant of the scale-invariance test (P3).
      wd_ratio: weight-decay factor applied on projected steps (P5).
      nesterov: Nesterov numerator (A5).
      channel_axis: output-channel axis of the weights' layout (D3); 0 for PyTorch's
        ``Linear`` and ``Conv``; settable per param group.
      impl: which implementation steps a param group (settable per group): ``"native"``, the
        C step (CPU tensors, contiguous or channels_last, channel axis 0), ``"foreach"``, torch
        ops (every device and layout), or None (default) for the first of these that can take
        the group; docs/torch.md has the table. A named one that cannot take a group raises.

    Examples:
      >>> import torch
      >>> from adamp_torch import AdamP
      >>> model = torch.nn.Linear(3, 2)
      >>> opt = AdamP(model.parameters(), lr=1e-3, weight_decay=1e-2)
      >>> model(torch.ones(1, 3)).sum().backward()
      >>> opt.step()

    References:
      Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant
      Weights", ICLR 2021, Algorithm 2.
    """

    _state_keys = ("exp_avg", "exp_avg_sq")
    _hyper = ("lr", "betas", "eps", "weight_decay", "delta", "wd_ratio", "nesterov")

    def __init__(
        self,
        params: Iterable,
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        delta: float = 0.1,
        wd_ratio: float = 0.1,
        nesterov: bool = False,
        *,
        channel_axis: int = 0,
        impl: str | None = None,
    ) -> None:
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            delta=delta,
            wd_ratio=wd_ratio,
            nesterov=nesterov,
            channel_axis=channel_axis,
            impl=impl,
        )
        super().__init__(params, defaults)

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        state["step"] = torch.tensor(0.0, dtype=torch.float32)
        state["exp_avg"] = zeros_state(p)
        state["exp_avg_sq"] = zeros_state(p)

    def _native_update(self, group, ps, gs, states):
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)  # A1
        m, v = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        return _native.adamp_step(group, ps, gs, m, v, steps)  # A2-A8, _native.c

    def _update_bucket(self, group, layout, ps, gs, states):
        b1, b2 = group["betas"]
        m = [_kernel.local(s["exp_avg"]) for s in states]
        v = [_kernel.local(s["exp_avg_sq"]) for s in states]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)  # A1 (host-side counters, as in torch.optim)
        eps, device = group["eps"], ps[0].device
        t = _kernel.step_scalars(steps, device)
        bc1, sqrt_bc2 = 1 - b1**t, (1 - b2**t).sqrt()
        lr = _kernel.as_device_scalar(group["lr"], device)

        if b1 >= 0.5:  # A2 in one pass, as torch.optim.Adam: lerp with weight 1 - b1 <= 0.5
            torch._foreach_lerp_(m, gs, 1 - b1)
        else:  # lerp would use 1 - weight, i.e. b1 rounded through 1 - b1: 19% off at b1 = 1e-7
            torch._foreach_mul_(m, b1)
            torch._foreach_add_(m, gs, alpha=1 - b1)
        torch._foreach_mul_(v, b2)  # A3
        torch._foreach_addcmul_(v, gs, gs, value=1 - b2)
        # A4, D5: den = sqrt(v) / sqrt(1 - b2^t) + eps, kept multiplied by sqrt(1 - b2^t), so
        # u below is u_A5 / sqrt(1 - b2^t) and the step size a carries that factor back.
        # On a CPU, eager, den and u are written into buffers kept between steps.
        keep = device.type == "cpu" and not torch.compiler.is_compiling()
        den = _kernel.foreach_into("sqrt", self._kept(ps, 2) if keep else None, v)
        torch._foreach_add_(den, _kernel.per_tensor(eps * sqrt_bc2))
        u_out = self._kept(ps, 0) if keep else None
        if group["nesterov"]:  # A5, D5: with the updated m
            u = _kernel.foreach_into("mul", u_out, m, b1)
            torch._foreach_add_(u, gs, alpha=1 - b1)
            torch._foreach_div_(u, den)
        else:
            u = _kernel.foreach_into("div", u_out, m, den)
        a = lr * sqrt_bc2 / bc1  # step size of (A8) for this scaled u
        return self._project_and_apply(group, layout, ps, gs, u, a, lr, scratch=den)

    def _project_and_apply(self, group, layout, ps, gs, u, a, lr, *, scratch):
        """(A6)-(A8) for a bucket: the projection as a per-row scale s of ``u``, then
        ``p * (1 - lr wd r + a s) - a u`` with ``a`` the (T,) step sizes for this ``u``."""
        _kernel.row_sums(layout, ps, gs, u, scratch=scratch)
        proj = _kernel.projection(
            layout, delta=group["delta"], eps=group["eps"], wd_ratio=group["wd_ratio"]
        )
        decay = 1 - lr * group["weight_decay"] * proj.r  # A7, D7
        factor = decay[layout.seg] + a[layout.seg] * proj.s
        torch._foreach_mul_(ps, _kernel.per_row(layout, factor))
        torch._foreach_addcmul_(ps, u, _kernel.per_tensor(-a))  # A8
        return proj.views

    def _kept(self, ps, slot):
        """Bucket-sized temporaries kept between steps (``_kernel.flat_buffers``)."""
        return _kernel.flat_buffers(ps, cache=self._work, slot=slot)
