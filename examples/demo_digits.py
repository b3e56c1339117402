"""Part 3: a small BatchNorm CNN on scikit-learn's digits, SGD vs SGDP and AdamW vs AdamP.

Same learning rate and weight decay within each pair; PyTorch here, the same experiment through
the optax adapter in ``demo_digits_jax`` and the Keras adapter in ``demo_digits_keras``.

Per epoch: test accuracy, mean norm of the conv filters (one row per output channel, the unit
that BatchNorm makes scale-invariant) and their effective step size ``lr / |w_i|^2`` (``lr`` the
base learning rate; the schedule scales every optimizer's step alike). Per
weight: the share of steps on which the projection fired, from the adapter's own counter
(``adamp_torch.ViewCounter``, ``adamp_jax.decide``, ``adamp_keras`` ``track_projection``), or,
where an adapter offers none, from ``adamp_core.decide`` on the weight before the step and its
gradient, which is the same decision (it depends on those two alone, P1-P3).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from adamp_core import decide

BATCH = 32
EPS = 1e-8
DELTA = 0.1
# One hyperparameter set per pair, shared by baseline and projected optimizer. SGD's decay is
# torch's L2 (added to the gradient); SGDP's is decoupled and divided by 1 - momentum (D7),
# the same amount in the steady state. AdamW and AdamP decay decoupled, as lr * wd * p.
OPTIMIZERS = {
    "SGD": dict(lr=0.1, momentum=0.9, weight_decay=1e-4),
    "SGDP": dict(lr=0.1, momentum=0.9, weight_decay=1e-4),
    "AdamW": dict(lr=1e-3, weight_decay=1e-2),
    "AdamP": dict(lr=1e-3, weight_decay=1e-2),
}
PROJECTED = ("SGDP", "AdamP")
SCHEDULES = ("cosine", "constant")  # cosine: lr_t = lr (1 + cos(pi t / T)) / 2, as the paper trains


def lr_at(lr: float, t: int, steps: int, schedule: str) -> float:
    """The learning rate of step ``t`` (0-based) of ``steps``."""
    if schedule == "constant":
        return lr
    return lr * (1 + math.cos(math.pi * t / steps)) / 2


class Data(NamedTuple):
    """Images ``(n, 8, 8, 1)`` in [0, 1] (NHWC; the torch trainer transposes) and labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data() -> Data:
    """The 1,797 digits shipped with scikit-learn, a fixed stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    return Data(xtr, ytr, xte, yte)


def batches(n: int, steps: int, seed: int):
    """``steps`` index batches, reshuffled every epoch, the same for every optimizer of a seed."""
    rng = np.random.default_rng(seed)
    per_epoch = n // BATCH
    order = np.concatenate(
        [rng.permutation(n)[: per_epoch * BATCH] for _ in range(-(-steps // per_epoch))]
    )
    return order[: steps * BATCH].reshape(steps, BATCH), per_epoch


def filter_stats(kernels: list[np.ndarray], lr: float, channel_axis: int) -> tuple[float, float]:
    """Mean filter norm ``|w_i|`` over every conv filter, and mean ``lr / |w_i|^2``."""
    norms = np.concatenate(
        [
            np.linalg.norm(
                np.moveaxis(k, channel_axis, 0).reshape(k.shape[channel_axis], -1), axis=1
            )
            for k in kernels
        ]
    )
    return float(norms.mean()), float(np.mean(lr / norms**2))


class Result(NamedTuple):
    """One training run; per-epoch lists start with the initial model (epoch 0)."""

    optimizer: str
    seed: int
    accuracy: list[float]
    filter_norm: list[float]
    effective_step: list[float]
    projected: dict[str, float]  # weight name -> share of steps on which a view fired
    views: dict[str, dict[str, int]]  # weight name -> {"channel": n, "layer": n}


class Tally:
    """Counts, per weight, the steps on which ``decide`` fires (for SGDP / AdamP runs)."""

    def __init__(self, names: list[str]):
        self.steps = 0
        self.views = {n: {"channel": 0, "layer": 0} for n in names}

    def add(self, pairs: dict[str, tuple[np.ndarray, np.ndarray]], channel_axis: int) -> None:
        self.steps += 1
        for name, (p, g) in pairs.items():
            view = decide(p, g, delta=DELTA, eps=EPS, channel_axis=channel_axis).view
            if view is not None:
                self.views[name][view] += 1

    def shares(self) -> dict[str, float]:
        return {n: sum(v.values()) / max(self.steps, 1) for n, v in self.views.items()}


def train_torch(
    mod, name: str, data: Data, steps: int, seed: int, schedule: str = "cosine", progress=None
) -> Result:
    """Trains the CNN with ``name`` (``mod`` is ``adamp_torch``, needed for SGDP / AdamP)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),  # a bias before BatchNorm is redundant
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )
    hp = OPTIMIZERS[name]
    factory = {
        "SGD": torch.optim.SGD,
        "AdamW": torch.optim.AdamW,
        "SGDP": getattr(mod, "SGDP", None),
        "AdamP": getattr(mod, "AdamP", None),
    }[name]
    opt = factory(model.parameters(), **hp)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_at(1.0, t, steps, schedule))
    weights = {"conv1": model[0].weight, "conv2": model[3].weight, "fc": model[8].weight}
    convs = [model[0].weight, model[3].weight]
    xtr = torch.from_numpy(data.x_train).permute(0, 3, 1, 2).contiguous()
    xte = torch.from_numpy(data.x_test).permute(0, 3, 1, 2).contiguous()
    ytr, yte = torch.from_numpy(data.y_train), torch.from_numpy(data.y_test)
    order, per_epoch = batches(len(ytr), steps, seed)
    tally = Tally(list(weights))
    # The adapter's own on-device counter when it offers one; else the reference's decision.
    counter = mod.ViewCounter(opt) if name in PROJECTED and hasattr(mod, "ViewCounter") else None
    acc, fnorm, eff = [], [], []

    def record():
        model.eval()
        with torch.no_grad():
            acc.append(float((model(xte).argmax(1) == yte).float().mean()))
        model.train()
        n, e = filter_stats([w.detach().numpy() for w in convs], hp["lr"], 0)
        fnorm.append(n)
        eff.append(e)

    record()
    for t, idx in enumerate(order):
        i = torch.from_numpy(idx)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xtr[i]), ytr[i]).backward()
        if name in PROJECTED and counter is None:
            tally.add({k: (w.detach().numpy(), w.grad.numpy()) for k, w in weights.items()}, 0)
        opt.step()
        sched.step()
        if (t + 1) % per_epoch == 0 or t + 1 == steps:
            record()
        if progress is not None:
            progress(1)
    if counter is not None:
        counts = counter.counts(weights)
        tally.steps = steps
        tally.views = {k: {"channel": c["channel"], "layer": c["layer"]} for k, c in counts.items()}
    shares = tally.shares() if name in PROJECTED else {}
    return Result(name, seed, acc, fnorm, eff, shares, tally.views if name in PROJECTED else {})


def plot(results: list[Result], path, title: str) -> None:
    """Test accuracy, mean filter norm and effective step size per epoch (mean over seeds)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    colors = {"SGD": "tab:blue", "SGDP": "tab:blue", "AdamW": "tab:red", "AdamP": "tab:red"}
    fields = (
        ("accuracy", "test accuracy"),
        ("filter_norm", "mean conv filter norm |w_i|"),
        ("effective_step", "mean effective step lr / |w_i|^2"),
    )
    for name in OPTIMIZERS:
        rs = [r for r in results if r.optimizer == name]
        if not rs:
            continue
        style = dict(color=colors[name], ls="-" if name in PROJECTED else "--", label=name)
        for ax, (field, label) in zip(axes, fields, strict=True):
            v = np.array([getattr(r, field) for r in rs])
            epochs = np.arange(v.shape[1])
            ax.plot(epochs, v.mean(0), **style)
            ax.fill_between(epochs, v.min(0), v.max(0), color=colors[name], alpha=0.12)
            ax.set_title(label)
            ax.set_xlabel("epoch")
    axes[0].set_ylim(0.8, 1.0)
    axes[2].set_yscale("log")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
