"""What the three PyTorch drivers share: tensors in and out, param groups, state keys."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import Driver, Output, Problem, float_dtypes, numpy_dtype


def _torch():
    import torch

    return torch


class TorchDriverBase(Driver):
    """A ``torch.optim.Optimizer`` subclass run on parameters built from the problem.

    Subclasses set ``classes`` (``{"adamp": cls, "sgdp": cls}``) and ``translate``.
    """

    default_channel_axis = 0
    strided = True
    sparse_gradients = "rejected"  # sparse COO gradients (nn.Embedding(sparse=True))
    complex_dtypes = ("complex64", "complex128")

    def optimizer_class(self, optimizer: str):
        raise NotImplementedError

    def translate(self, optimizer: str, hp: dict[str, Any], channel_axis: int) -> dict[str, Any]:
        """Reference hyperparameters -> this class's keyword arguments (per param group).

        By default the official signature: no ``channel_axis`` (axis 0) and no
        ``project_buffer`` (whatever the class does, it does; the comparison shows it).
        """
        assert channel_axis == 0, f"{self.name} has no channel_axis"
        return {k: v for k, v in hp.items() if k != "project_buffer"}

    def setup(self, device: str) -> None:
        torch = _torch()
        if device == "gpu":
            if not torch.cuda.is_available():
                raise RuntimeError(f"{self.name}: torch {torch.__version__} sees no CUDA device")
            torch.backends.cuda.matmul.allow_tf32 = False  # TF32 off: float32 means float32
            torch.backends.cudnn.allow_tf32 = False
            torch.set_float32_matmul_precision("highest")
            self.device_name = torch.cuda.get_device_name(0)
        self.device = device
        self.torch_device = torch.device("cuda" if device == "gpu" else "cpu")

    def dtypes(self) -> tuple[str, ...]:
        return float_dtypes(self.device)

    # -- conversions --------------------------------------------------------------------------

    def tensor(self, x: np.ndarray, layout: str = "contiguous"):
        torch = _torch()
        dtype = getattr(torch, x.dtype.name)
        if x.dtype.kind == "c":
            return torch.from_numpy(np.array(x, order="C")).to(self.torch_device)
        src = torch.from_numpy(np.array(x, dtype=np.float64, order="C"))  # 0-D stays 0-D
        if layout == "strided" and x.ndim >= 2:
            if x.ndim == 4:
                t = torch.empty(x.shape, dtype=dtype, device=self.torch_device).to(
                    memory_format=torch.channels_last
                )
            else:  # reversed strides: a transposed tensor with the same logical shape
                t = torch.empty(x.shape[::-1], dtype=dtype, device=self.torch_device)
                t = t.permute(*reversed(range(x.ndim)))
            t.copy_(src)
            return t
        return src.to(device=self.torch_device, dtype=dtype)

    @staticmethod
    def array(t, dtype: str | None = None) -> np.ndarray:
        torch = _torch()
        if t.is_complex():
            return t.detach().cpu().to(torch.complex128).numpy().copy()
        a = t.detach().cpu().to(torch.float64).numpy().copy()
        return a.astype(numpy_dtype(dtype)) if dtype else a

    def sparse_tensor(self, s) -> Any:
        """``SparseRows`` as an uncoalesced COO tensor (repeated indices, as an Embedding's)."""
        torch = _torch()
        return torch.sparse_coo_tensor(
            torch.from_numpy(np.asarray(s.indices, np.int64))[None, :],
            self.tensor(s.values),
            s.shape,
            check_invariants=True,
        )

    # -- running ------------------------------------------------------------------------------

    def read_state(self, optimizer: str, opt, group: dict, p) -> dict[str, Any]:
        state = opt.state[p]
        if optimizer == "adamp":
            step = state.get("step", group.get("step"))
            return {
                "step": int(step.item() if hasattr(step, "item") else step),
                "exp_avg": self.array(state["exp_avg"]),
                "exp_avg_sq": self.array(state["exp_avg_sq"]),
            }
        buf = state["momentum"] if "momentum" in state else state["momentum_buffer"]
        return {"momentum_buffer": self.array(buf)}

    def _groups(self, problem: Problem, params: list) -> list[dict[str, Any]]:
        return [
            {
                "params": [params[i] for i in g.indices],
                **self.translate(problem.optimizer, g.hyperparams, g.channel_axis),
            }
            for g in problem.groups
        ]

    def run(self, problem: Problem) -> list[list[Output]]:
        torch = _torch()
        layouts = problem.layouts or ["contiguous"] * len(problem.params)
        params = [
            torch.nn.Parameter(self.tensor(p, layout))
            for p, layout in zip(problem.params, layouts, strict=True)
        ]
        groups = self._groups(problem, params)
        cls = self.optimizer_class(problem.optimizer)
        opt = cls(groups, lr=groups[0]["lr"])  # SGDP has no default lr
        owner = {i: opt.param_groups[gi] for gi, g in enumerate(problem.groups) for i in g.indices}
        out = []
        for grads in problem.grads:
            for p, g, layout in zip(params, grads, layouts, strict=True):
                p.grad = self.tensor(g, layout)
            opt.step()
            out.append(
                [
                    Output(
                        self.array(p),
                        self.read_state(problem.optimizer, opt, owner[i], p),
                        self.array(p.grad),
                        dtype=str(p.dtype).removeprefix("torch."),
                    )
                    for i, p in enumerate(params)
                ]
            )
        return out

    def run_rejected(self, problem: Problem):
        torch = _torch()
        params = [torch.nn.Parameter(self.tensor(p)) for p in problem.params]
        error, opt = None, None
        try:  # complex parameters may be refused at construction, sparse gradients at step()
            groups = self._groups(problem, params)
            opt = self.optimizer_class(problem.optimizer)(groups, lr=groups[0]["lr"])
            for i, p in enumerate(params):
                s = problem.sparse[0][i] if problem.sparse else None
                p.grad = self.tensor(problem.grads[0][i]) if s is None else self.sparse_tensor(s)
            opt.step()
        except Exception as e:
            error = e
        outputs = []
        for p in params:
            state = opt.state.get(p, {}) if opt is not None else {}
            outputs.append(
                Output(
                    self.array(p),
                    {k: self.array(v) if torch.is_tensor(v) else v for k, v in state.items()},
                )
            )
        return error, outputs

    def construct(self, optimizer: str, hyperparams: dict[str, Any]) -> None:
        torch = _torch()
        p = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.float64))
        kwargs = self.translate(optimizer, hyperparams, 0)
        opt = self.optimizer_class(optimizer)([p], **kwargs)
        p.grad = torch.ones_like(p)
        opt.step()
