"""Which projection view fired, per parameter and step, counted on the device."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from adamp_torch._base import ProjectionOptimizer
from adamp_torch._kernel import VIEW_CODES


class ViewCounter:
    """Counts, per parameter, the steps in which each view of the projection fired.

    Setting ``optimizer.track_views = True`` makes every ``step()`` leave in
    ``optimizer.last_views`` a dict ``{param: 0-d int8 tensor}`` with 0 (no view fired),
    1 (channel view) or 2 (layer view), on the parameter's device. This class turns that on and
    accumulates the codes with a step post-hook, on the device too, so nothing is read on the
    host until ``counts()`` or ``shares()`` is called.

    Args:
      optimizer: an ``AdamP`` or ``SGDP``.

    Examples:
      >>> import torch
      >>> from adamp_torch import AdamP, ViewCounter
      >>> model = torch.nn.Linear(4, 3)
      >>> opt = AdamP(model.parameters())
      >>> counter = ViewCounter(opt)
      >>> model(torch.ones(2, 4)).sum().backward(); opt.step()
      >>> counter.shares({"weight": model.weight})["weight"]["steps"]
      1
    """

    def __init__(self, optimizer: ProjectionOptimizer) -> None:
        if not isinstance(optimizer, ProjectionOptimizer):
            raise TypeError(f"optimizer must be an AdamP or SGDP (got {type(optimizer)!r})")
        optimizer.track_views = True
        self.optimizer = optimizer
        self._counts: dict[Tensor, Tensor] = {}
        self._handle = optimizer.register_step_post_hook(self._record)

    def _record(self, optimizer: ProjectionOptimizer, args, kwargs) -> None:
        for p, code in optimizer.last_views.items():
            c = self._counts.get(p)
            if c is None:
                c = self._counts[p] = torch.zeros(3, dtype=torch.int64, device=code.device)
            c.index_add_(0, code.long().view(1), torch.ones(1, dtype=torch.int64, device=c.device))

    def counts(self, names: Mapping[str, Tensor]) -> dict[str, dict[str, int]]:
        """Steps per view, ``{name: {"none": n0, "channel": n1, "layer": n2}}`` (reads host)."""
        out = {}
        for name, p in names.items():
            c = self._counts.get(p)
            values = c.tolist() if c is not None else [0, 0, 0]
            out[name] = {VIEW_CODES[i] or "none": int(values[i]) for i in range(3)}
        return out

    def shares(self, names: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
        """Share of a parameter's steps in which each view fired, plus ``steps`` and
        ``projected`` (channel + layer)."""
        out = {}
        for name, c in self.counts(names).items():
            n = sum(c.values())
            share = {k: (v / n if n else 0.0) for k, v in c.items()}
            share["projected"] = share["channel"] + share["layer"]
            share["steps"] = n
            out[name] = share
        return out

    def reset(self) -> None:
        self._counts.clear()

    def remove(self) -> None:
        """Stops counting and recording."""
        self._handle.remove()
        self.optimizer.track_views = False
