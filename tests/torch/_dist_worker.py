"""Bodies of the 2-process gloo tests (DDP, FSDP2), run by torch.multiprocessing.spawn.

Each rank saves what the parent compares into ``out_dir``; nothing is asserted here.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist
from adamp_torch import SGDP, AdamP

from adamp_core.testing import branch_gradient

OPTS = {
    "adamp": (AdamP, dict(lr=1e-2, weight_decay=0.1)),
    "sgdp": (SGDP, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
}
# (shape, channel_axis, branch): uneven row split (5 rows on 2 ranks), rows cut by the shard
# (channel axis 1 with dim 0 sharded), and a parameter too small to reach rank 1 at all.
FSDP_PARAMS = [
    ((5, 3, 2, 2), 0, "channel"),
    ((6, 4), 0, "layer"),
    ((4, 6), 1, "channel"),
    ((7, 5), 0, "none"),
    ((1, 3), 0, "channel"),
    ((5,), 0, "none"),
]
STEPS = 4


def _init(rank: int, world: int, store_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=world)
    torch.manual_seed(0)


def _finish() -> None:
    """Both ranks reach the end before the group is torn down: a rank that destroys its gloo
    pairs while the other still uses them can abort the other process."""
    dist.barrier()
    dist.destroy_process_group()


def fsdp_grads() -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
    """Initial weights and per-step full gradients, the same on every rank (seeded)."""
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(s) for s, _, _ in FSDP_PARAMS]
    grads = []
    for _ in range(STEPS):
        step = []
        for p0, (s, axis, branch) in zip(init, FSDP_PARAMS, strict=True):
            g = branch_gradient(p0, rng, branch, channel_axis=axis) if len(s) > 1 else None
            step.append(g if g is not None else rng.standard_normal(s))
        grads.append(step)
    return init, grads


class Holder(torch.nn.Module):
    def __init__(self, tensors: list[np.ndarray]) -> None:
        super().__init__()
        self.ps = torch.nn.ParameterList([torch.nn.Parameter(torch.tensor(t)) for t in tensors])


def fsdp2(rank: int, world: int, store_file: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    _init(rank, world, store_file)
    mesh = init_device_mesh("cpu", (world,))
    for name in OPTS:
        _fsdp2_run(rank, mesh, out_dir, name)
    _finish()


def fsdp2_compiled(rank: int, world: int, store_file: str, out_dir: str) -> None:
    """As ``fsdp2``, with ``torch.compile(opt.step)``."""
    from torch.distributed.device_mesh import init_device_mesh

    _init(rank, world, store_file)
    mesh = init_device_mesh("cpu", (world,))
    for name in OPTS:
        torch._dynamo.reset()  # each optimizer's own compiles, within the recompile limit
        _fsdp2_run(rank, mesh, out_dir, name, compiled=True)
    _finish()


def _fsdp2_run(rank: int, mesh, out_dir: str, name: str, compiled: bool = False) -> None:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    init, grads = fsdp_grads()
    model = Holder(init)
    fully_shard(model, mesh=mesh)
    cls, hp = OPTS[name]
    groups = [
        {"params": [p], "channel_axis": axis}
        for p, (_, axis, _) in zip(model.ps, FSDP_PARAMS, strict=True)
    ]
    opt = cls(groups, **hp)
    opt.track_views = True
    step_fn = torch.compile(opt.step) if compiled else opt.step
    views = []
    for step in grads:
        for p, g in zip(model.ps, step, strict=True):
            p.grad = distribute_tensor(torch.tensor(g), mesh, [Shard(0)])
        step_fn()
        views.append([int(opt.last_views[p]) for p in model.ps])
    full = [p.detach().full_tensor().numpy() for p in model.ps]
    np.savez(os.path.join(out_dir, f"{name}-rank{rank}.npz"), *full, views=np.array(views))


def ddp(rank: int, world: int, store_file: str, out_dir: str) -> None:
    _init(rank, world, store_file)
    for name in OPTS:
        _ddp_run(rank, world, out_dir, name)
    _finish()


def _ddp_run(rank: int, world: int, out_dir: str, name: str) -> None:
    model = ddp_model()
    net = torch.nn.parallel.DistributedDataParallel(model)
    cls, hp = OPTS[name]
    opt = cls(net.parameters(), **hp)
    for t in range(STEPS):
        x, y = ddp_batch(t)
        half = x.shape[0] // world
        xs, ys = x[rank * half : (rank + 1) * half], y[rank * half : (rank + 1) * half]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xs), ys).backward()
        opt.step()
    full = [p.detach().numpy() for p in model.parameters()]
    np.savez(os.path.join(out_dir, f"{name}-rank{rank}.npz"), *full)


def ddp_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(6 * 4 * 4, 4),
    ).double()


def ddp_batch(t: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + t)
    return (
        torch.randn(8, 3, 4, 4, generator=g, dtype=torch.float64),
        torch.randint(0, 4, (8,), generator=g),
    )
