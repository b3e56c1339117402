"""Shared helpers of the adamp_torch tests: running trajectories, errors, tolerances."""

from __future__ import annotations

import adamp_torch
import numpy as np
import torch

# Relative error bounds, keyed by dtype, of whole arrays (max |a - b| / max |b|).
# float64: the bound (measured worst case about 1e-14 over 5 steps).
# float32: float32 rounding of a few steps; measured worst case about 2e-7.
# float16 / bfloat16: one rounding of the stored parameter (half an ulp: 2^-11 / 2^-8).
REL_TOL = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 2.0**-10,
    torch.bfloat16: 2.0**-7,
}
STATE_KEYS = {"adamp": ("exp_avg", "exp_avg_sq"), "sgdp": ("momentum",)}
REF_STATE = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "momentum": "momentum_buffer"}


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float64).cpu().numpy().copy()


def make(name: str, params, **hp):
    return {"adamp": adamp_torch.AdamP, "sgdp": adamp_torch.SGDP}[name](params, **hp)


def run(name: str, param: torch.Tensor, grads, **hp):
    """Steps one parameter through ``grads``; returns [(param, {key: state}, view)] per step."""
    p = torch.nn.Parameter(param.clone())
    opt = make(name, [p], **hp)
    opt.track_views = True
    out = []
    for g in grads:
        p.grad = g.clone().to(p.dtype)
        opt.step()
        st = {k: to_np(opt.state[p][k]) for k in STATE_KEYS[name]}
        out.append((to_np(p), st, int(opt.last_views[p])))
    return out


def bn_cnn(width: int, classes: int, seed: int = 0, dtype=torch.float64) -> torch.nn.Module:
    """Conv -> BatchNorm -> Linear on 4x4 images: its conv kernel is scale-invariant."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, width, 3, padding=1),
        torch.nn.BatchNorm2d(width),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(width * 4 * 4, classes),
    ).to(dtype)


def image_batch(step: int, dtype, *, size: int, classes: int, seed: int):
    """A reproducible batch of 4x4 RGB images and labels for ``bn_cnn``, one per step."""
    gen = torch.Generator().manual_seed(seed + step)
    x = torch.randn(size, 3, 4, 4, generator=gen, dtype=dtype)
    return x, torch.randint(0, classes, (size,), generator=gen)
