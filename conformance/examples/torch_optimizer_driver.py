"""A driver for an implementation the suite does not ship: ``torch-optimizer`` 0.3.0's
``AdamP`` / ``SGDP`` (PyPI ``torch-optimizer``, import name ``torch_optimizer``).

Written from ``docs/conformance.md`` alone, as an outside implementer would, and run as::

    PYTHONPATH=conformance/examples adamp-conformance \\
        --backend=torch_optimizer_driver:TorchOptimizerDriver \\
        --xfails-file=conformance/examples/torch_optimizer.xfails

Its known deviations from the reference are in ``torch_optimizer.xfails`` beside it.
"""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import torch
import torch_optimizer
from adamp_conformance import Driver, Output, Problem


class TorchOptimizerDriver(Driver):
    name = "torch-optimizer"
    version = version("torch-optimizer")
    default_channel_axis = 0  # PyTorch weights: output channels first (D3)
    channel_axes = (0,)  # its views reshape along axis 0 only
    strided = False  # left out here: its views use Tensor.view
    sparse_gradients = "rejected"  # PyTorch has sparse COO gradients; the class is not for them
    complex_dtypes = ("complex64", "complex128")
    # How its ValueError messages name each argument ("Invalid learning rate: ...").
    names = {  # noqa: RUF012
        "lr": "learning rate",
        "eps": "epsilon",
        "beta1": "beta parameter at index 0",
        "beta2": "beta parameter at index 1",
        "weight_decay": "weight_decay",
        "delta": "delta",
        "wd_ratio": "wd_ratio",
        "momentum": "momentum",
        "dampening": "dampening",
        "nesterov": "nesterov",
    }

    def dtypes(self):
        return ("float64", "float32", "float16", "bfloat16")

    @staticmethod
    def _tensor(x: np.ndarray) -> torch.Tensor:
        if x.dtype.kind == "c":
            return torch.from_numpy(np.array(x))
        # via float64: NumPy's bfloat16 (ml_dtypes) has no torch counterpart to share memory with
        return torch.from_numpy(np.array(x, np.float64)).to(getattr(torch, x.dtype.name))

    @staticmethod
    def _array(t: torch.Tensor) -> np.ndarray:
        t = t.detach()
        return (t if t.is_complex() else t.to(torch.float64)).numpy().copy()

    @staticmethod
    def _class(optimizer: str):
        return {"adamp": torch_optimizer.AdamP, "sgdp": torch_optimizer.SGDP}[optimizer]

    def _optimizer(self, problem: Problem, params: list[torch.Tensor]):
        groups = []
        for g in problem.groups:
            # reference spelling -> its keyword arguments; it has no channel_axis and no
            # project_buffer (what it does instead, the comparison shows)
            hp = {k: v for k, v in g.hyperparams.items() if k != "project_buffer"}
            groups.append({"params": [params[i] for i in g.indices], **hp})
        return self._class(problem.optimizer)(groups)

    def _state(self, optimizer: str, state: dict) -> dict:
        if optimizer == "adamp":
            return {
                "step": state["step"],
                "exp_avg": self._array(state["exp_avg"]),
                "exp_avg_sq": self._array(state["exp_avg_sq"]),
            }
        return {"momentum_buffer": self._array(state["momentum"])}

    def run(self, problem: Problem) -> list[list[Output]]:
        params = [torch.nn.Parameter(self._tensor(p)) for p in problem.params]
        opt = self._optimizer(problem, params)
        outputs = []
        for grads in problem.grads:
            for p, g in zip(params, grads, strict=True):
                p.grad = self._tensor(g)
            opt.step()
            outputs.append(
                [
                    Output(
                        self._array(p),
                        self._state(problem.optimizer, opt.state[p]),
                        self._array(p.grad),
                        dtype=str(p.dtype).removeprefix("torch."),
                    )
                    for p in params
                ]
            )
        return outputs

    def run_rejected(self, problem: Problem):
        params = [torch.nn.Parameter(self._tensor(p)) for p in problem.params]
        error, opt = None, None
        try:
            opt = self._optimizer(problem, params)
            for i, p in enumerate(params):
                s = problem.sparse[0][i] if problem.sparse else None
                if s is None:
                    p.grad = self._tensor(problem.grads[0][i])
                else:  # as nn.Embedding(sparse=True) makes it: repeated rows, uncoalesced
                    index = torch.from_numpy(np.asarray(s.indices, np.int64))[None, :]
                    p.grad = torch.sparse_coo_tensor(
                        index, self._tensor(s.values), s.shape, check_invariants=True
                    )
            opt.step()
        except Exception as e:
            error = e
        outputs = []
        for p in params:
            state = opt.state.get(p, {}) if opt is not None else {}
            state = {k: self._array(v) if torch.is_tensor(v) else v for k, v in state.items()}
            outputs.append(Output(self._array(p), state))
        return error, outputs

    def construct(self, optimizer: str, hyperparams: dict) -> None:
        p = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.float64))
        hp = {k: v for k, v in hyperparams.items() if k != "project_buffer"}
        opt = self._class(optimizer)([p], **hp)
        p.grad = torch.ones_like(p)
        opt.step()
