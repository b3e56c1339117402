"""Runs the official package (PyPI ``adamp`` 0.3.0) and pytorch-optimizer on NumPy data, float64."""

from __future__ import annotations

import numpy as np
import torch


def torch_trajectory(opt_cls, param, grads, state_keys, **hp):
    """Steps ``opt_cls`` on one float64 parameter; returns (param, {key: state}) per step."""
    p = torch.nn.Parameter(torch.tensor(param, dtype=torch.float64))
    opt = opt_cls([p], **hp)
    out = []
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        st = opt.state[p]
        out.append(
            (
                p.detach().numpy().copy(),
                {
                    k: np.asarray(
                        st[k].detach().numpy() if torch.is_tensor(st[k]) else st[k]
                    ).copy()
                    for k in state_keys
                },
            )
        )
    return out
