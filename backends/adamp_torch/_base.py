"""What AdamP and SGDP share as ``torch.optim.Optimizer`` subclasses: groups, state, hooks."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import required

from adamp_core import validate_hyperparameters
from adamp_torch import _kernel, _native

LOW_PRECISION = (torch.float16, torch.bfloat16)
# The implementations of a step, by the name ``impl=`` takes; automatic choice (``impl=None``)
# takes the first that can step a group.
IMPLS = ("native", "foreach")


def check_impl(impl: Any, opt_name: str) -> None:
    if impl is not None and impl not in IMPLS:
        raise ValueError(
            f"{opt_name}: impl must be None (automatic) or one of {', '.join(map(repr, IMPLS))} "
            f"(got {impl!r})"
        )


class ProjectionOptimizer(torch.optim.Optimizer):
    """Base class: validation, per-step checks, bucket iteration and view recording.

    Subclasses set ``_state_keys`` (tensor state besides ``step``), ``_hyper`` (the group keys
    given to the shared validator) and implement ``_init_state`` and ``_update_bucket``.
    """

    _state_keys: tuple[str, ...] = ()
    _hyper: tuple[str, ...] = ()

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        # The arguments first, before params is read, as torch.optim does (each group is
        # validated again in add_param_group, with its own values).
        validate_hyperparameters(
            **{k: defaults[k] for k in self._hyper if defaults[k] is not required}
        )
        self._layouts: dict[tuple, _kernel.Layout] = {}
        self._work: dict[tuple, Tensor] = {}  # reused temporaries (_kernel.flat_buffers)
        self.track_views = False
        self.last_views: dict[Tensor, Tensor] = {}
        super().__init__(params, defaults)
        cpu = [g for g in self.param_groups if any(p.device.type == "cpu" for p in g["params"])]
        if any(g["impl"] != "foreach" for g in cpu):
            # built (or found wanting) now, not while a step is compiled
            if _native.library() is None and any(g["impl"] == "native" for g in cpu):
                raise ValueError(f"{type(self).__name__}(impl='native'): {_native.status()}")
            _native.warn_unavailable(stacklevel=4)

    # -- groups ---------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group; its hyperparameters go through ``adamp_core.validate_hyperparameters``."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            validate_hyperparameters(**{k: group[k] for k in self._hyper})
            check_impl(group.get("impl"), type(self).__name__)
            offset = sum(len(g["params"]) for g in self.param_groups[:-1])
            for i, p in enumerate(group["params"]):
                _kernel.check_new_param(p, group["channel_axis"], type(self).__name__, offset + i)
        except Exception:
            self.param_groups.pop()  # nothing left half-added
            raise

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_layouts", {})
        self.__dict__.setdefault("_work", {})
        self.__dict__.setdefault("track_views", False)
        self.__dict__.setdefault("last_views", {})
        if type(self.defaults.get("lr")) is type(required):  # pickling made a new sentinel
            self.defaults["lr"] = required
        # Groups of state dicts saved by the official package or timm lack the keys only this
        # class has (channel_axis, project_buffer, ...): they get the defaults. Only the keys of
        # the constructor's arguments: torch's __setstate__ adds "differentiable" to
        # self.defaults, and a group that gained it (here, or in a later add_param_group)
        # would make the state_dict() of a loaded, copied or unpickled optimizer differ from
        # the original's. No step reads it (torch reads it with .get).
        own = list(inspect.signature(type(self)).parameters)[1:]  # after params
        if "differentiable" not in own:
            self.defaults.pop("differentiable", None)
        for group in self.param_groups:
            for key in own:
                if key not in group and key in self.defaults:
                    group[key] = self.defaults[key]
        for st in self.state.values():
            if "step" in st and not isinstance(st["step"], Tensor):  # official: a Python int
                st["step"] = torch.tensor(float(st["step"]), dtype=torch.float32)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict; float16/bfloat16 parameters keep float32 state (D9).

        The base class casts every state tensor to its parameter's dtype, which would round
        float32 moments to float16; they are restored from ``state_dict`` here. Each group
        keeps its own ``impl``: it says how this process steps, not what was saved (a
        checkpoint of ``impl="native"`` on a CPU resumes on CUDA).

        Raises:
          ValueError: for a param group saved by timm with ``caution=True`` (its cautious
            variant, which this class does not implement), before anything is loaded.
        """
        for i, group in enumerate(state_dict["param_groups"]):
            if group.get("caution"):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: param group {i} has caution=True "
                    "(timm's cautious variant), which is not implemented here"
                )
        impls = [g.get("impl") for g in self.param_groups]
        super().load_state_dict(state_dict)
        for group, impl in zip(self.param_groups, impls, strict=True):
            group["impl"] = impl
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params, strict=True):
            if p.dtype not in LOW_PRECISION or pid not in state_dict["state"]:
                continue
            for key, value in state_dict["state"][pid].items():
                if key != "step" and isinstance(value, Tensor):
                    self.state[p][key] = value.to(device=p.device, dtype=torch.float32)

    # -- step -----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs one step; with ``closure``, re-evaluates the loss first and returns it.

        Every group is checked, and its implementation chosen, before anything is written: a
        step that raises leaves params and state as they were."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        name = type(self).__name__
        work = []
        keys, state = self._state_keys, self.state
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads, states = [p.grad for p in params], [state[p] for p in params]
            axis = group["channel_axis"]
            for p, st in zip(params, states, strict=True):
                _kernel.check_step_param(p, st, keys, axis, name)
            impl = self._choose(index, group, params, grads, states)
            work.append((group, params, grads, states, impl))
        if self.track_views:
            self.last_views = {}
        for group, params, grads, states, impl in work:
            for p, st in zip(params, states, strict=True):
                if len(st) == 0:
                    self._init_state(p, st)
            impl.step(self, group, params, grads, states)
        return loss

    def _choose(
        self,
        index: int,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
    ) -> Implementation:
        """The one place where a param group's implementation is chosen: the one ``impl``
        names (an error if it cannot take the group), or the first of ``IMPLS`` that can."""
        asked = group.get("impl")
        for name in (asked,) if asked is not None else IMPLS:
            impl = IMPLEMENTATIONS[name]
            why = impl.why_not(self, group, params, grads, states)
            if why is None:
                return impl
            if asked is not None:
                raise ValueError(
                    f"{type(self).__name__}(impl={asked!r}) cannot step param group {index}: {why}"
                )
            if name == "native" and not torch.compiler.is_compiling():
                if any(p.device.type == "cpu" for p in params):
                    _native.warn_unavailable(stacklevel=5)  # once, if the library is wanting
        raise AssertionError("the foreach implementation takes every checked group")

    def _native_why_not(self, group, params, grads, states) -> str | None:
        kept = [[st.get(k) for st in states] for k in self._state_keys]
        return _native.why_not(group["channel_axis"], params, grads, kept)

    def _native_step(self, group, params, grads, states) -> None:
        """The whole group in one call of the C step (``_native.c``)."""
        update = partial(self._native_update, group, states=states)
        self._in_compute_dtype(params, params, grads, update)

    def _foreach_why_not(self, group, params, grads, states) -> str | None:
        return None  # torch ops take whatever passed the step's checks

    def _foreach_step(self, group, params, grads, states) -> None:
        """Multi-tensor torch ops, bucket by bucket (``_kernel.buckets``)."""
        if torch.compiler.is_compiling() and any(_kernel.is_dtensor(p) for p in params):
            # Dynamo traces DTensor shards with symbolic sizes that do not match their
            # state's (a fake-tensor broadcast error on the second compile): the group steps
            # eagerly, at a graph break, with the same results.
            return _eager(self._foreach_buckets, group, params, grads, states)
        self._foreach_buckets(group, params, grads, states)

    def _foreach_buckets(self, group, params, grads, states) -> None:
        for idx in _kernel.buckets(params):
            ps = [params[i] for i in idx]
            axes = [group["channel_axis"]] * len(ps)
            key = _kernel.layout_key(ps, axes)
            layout = self._layouts.get(key)
            if layout is None:
                device, dtype = _kernel.local(ps[0]).device, _kernel.compute_dtype(ps[0].dtype)
                layout = _kernel.make_layout(ps, axes, device, dtype)
                self._layouts[key] = layout
            local_p = [_kernel.local(p) for p in ps]
            local_g = [_kernel.local(grads[i]) for i in idx]
            update = partial(self._update_bucket, group, layout, states=[states[i] for i in idx])
            self._in_compute_dtype(ps, local_p, local_g, update)

    def _in_compute_dtype(
        self,
        ps: list[Tensor],
        local_p: list[Tensor],
        local_g: list[Tensor],
        update: Callable[[list[Tensor], list[Tensor]], Tensor],
    ) -> None:
        """Runs ``update(p, g)`` on the local tensors, on float32 copies for 16-bit parameters
        (D9: computed in float32, stored in the parameter's dtype), and records the views it
        returns for ``ps``."""
        low = ps[0].dtype in LOW_PRECISION
        work_p = [p.float() for p in local_p] if low else local_p
        work_g = [g.float() for g in local_g] if low else local_g
        views = update(work_p, work_g)
        if low:
            torch._foreach_copy_(local_p, work_p)
        if self.track_views:
            for p, v in zip(ps, views.unbind(), strict=True):
                self.last_views[p] = v

    def _native_update(
        self,
        group: dict[str, Any],
        ps: list[Tensor],
        gs: list[Tensor],
        states: list[dict[str, Any]],
    ) -> Tensor:
        raise NotImplementedError

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update_bucket(
        self,
        group: dict[str, Any],
        layout: _kernel.Layout,
        ps: list[Tensor],
        gs: list[Tensor],
        states: list[dict[str, Any]],
    ) -> Tensor:
        raise NotImplementedError


@torch.compiler.disable
def _eager(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` run eagerly: a graph break under torch.compile, nothing traced inside."""
    return fn(*args)


@dataclass(frozen=True)
class Implementation:
    """One implementation of a step. Both functions take ``(optimizer, group, params, grads,
    states)`` for the params of a group that have grads: ``why_not`` returns None where
    ``step`` can step them, else the reason; ``step`` steps them and records their views."""

    name: str
    why_not: Callable[..., str | None]
    step: Callable[..., None]


IMPLEMENTATIONS = {
    "native": Implementation(
        "native", ProjectionOptimizer._native_why_not, ProjectionOptimizer._native_step
    ),
    "foreach": Implementation(
        "foreach", ProjectionOptimizer._foreach_why_not, ProjectionOptimizer._foreach_step
    ),
}


def zeros_state(p: Tensor) -> Tensor:
    """A zero state tensor like ``p`` (same layout and sharding), float32 for 16-bit params."""
    if torch.compiler.is_compiling() and _kernel.is_dtensor(p):
        # traced, a DTensor's zeros_like gets an unevenly sharded param's shards wrong (3 rows
        # on both ranks of a 5-row param): made eagerly, at a graph break
        return _eager(zeros_state, p)
    dtype = _kernel.compute_dtype(p.dtype)
    return torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
