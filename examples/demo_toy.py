"""Part 1: the paper's 2-D toy, through the reference and through every installed adapter.

A scale-invariant loss ``L(w) = (1 - cos(w, w*))^2`` on ``w`` in R^2, started at ``w0 = (0, 1)``
with the target ``w*`` placed 1e-3 rad from the antipode of ``w0`` (the setting of the paper's
project page, clovaai.github.io/AdamP). The gradient is orthogonal to ``w``, so every step can
only lengthen ``w``; momentum lengthens it much faster, which shrinks the effective step and
stalls the rotation towards ``w*``. SGDP removes the radial part of the momentum step.

The weight is shaped ``(1, 2)``: one row of two, so the projection tests it (ndim >= 2).
The gradient comes from one NumPy function for every implementation, so the runs differ only
in the optimizer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from adamp_core import decide, sgdp_init, sgdp_step

LR = 0.01
STEPS = 500
EPS = 1e-8
W0 = np.array([[0.0, 1.0]])
ANGLE_STAR = -math.pi / 2 + 1e-3  # w0 sits at +pi/2; its antipode at -pi/2
W_STAR = np.array([math.cos(ANGLE_STAR), math.sin(ANGLE_STAR)])
# Agreement bound for float64 runs, relative to the largest |w| of the trajectory. Measured
# here: torch.optim.SGD against the reference differs by at most 5e-15 over 500 steps.
RTOL = 1e-9


class Config(NamedTuple):
    """One optimizer of the toy: heavy-ball momentum, and delta = 0 to switch projection off."""

    name: str
    momentum: float
    delta: float


BETAS = (0.9, 0.95, 0.99)
CONFIGS = (
    Config("GD", 0.0, 0.0),
    *(Config(f"GD+momentum {b}", b, 0.0) for b in BETAS),
    *(Config(f"SGDP {b}", b, 0.1) for b in BETAS),
)


def loss(w: np.ndarray) -> float:
    """``(1 - cos(w, w*))^2``."""
    v = np.reshape(w, -1)
    return float((1.0 - v @ W_STAR / np.linalg.norm(v)) ** 2)


def grad(w: np.ndarray) -> np.ndarray:
    """dL/dw = -2 (1 - c) dc/dw with dc/dw = w*/|w| - c w/|w|^2 (|w*| = 1): orthogonal to w."""
    v = np.reshape(np.asarray(w, dtype=np.float64), -1)
    n = np.linalg.norm(v)
    c = v @ W_STAR / n
    return (-2.0 * (1.0 - c) * (W_STAR / n - c * v / n**2)).reshape(1, 2)


def run_reference(cfg: Config, steps: int = STEPS, lr: float = LR) -> np.ndarray:
    """The trajectory ``(steps + 1, 2)`` of ``adamp_core.sgdp_step`` (float64).

    With ``delta = 0`` the test (P3) ``max cos < 0`` can never hold, so this is plain heavy-ball
    GD; ``momentum = 0`` makes it plain GD (the buffer is the gradient).
    """
    w, state = W0.copy(), sgdp_init(W0)
    out = [w[0]]
    for _ in range(steps):
        w, state = sgdp_step(w, grad(w), state, lr=lr, momentum=cfg.momentum, delta=cfg.delta)
        out.append(w[0])
    return np.array(out)


def count_decisions(trajectory: np.ndarray, delta: float) -> int:
    """How many steps of ``trajectory`` the projection test fires on, at this ``delta``."""
    return sum(
        decide(w[None], grad(w[None]), delta=delta, eps=EPS).view is not None
        for w in trajectory[:-1]
    )


def max_rel_diff(a: np.ndarray, ref: np.ndarray) -> float:
    """``max |a - ref|`` over the trajectory, relative to the largest |w| of ``ref``."""
    return float(np.max(np.abs(a - ref)) / np.max(np.linalg.norm(ref, axis=1)))


def run_torch_sgd(cfg: Config, steps: int = STEPS) -> np.ndarray:
    """Heavy-ball GD as ``torch.optim.SGD`` does it (float64), for the configs without delta."""
    import torch

    p = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=LR, momentum=cfg.momentum)
    return _torch_loop(p, opt, steps)


def _torch_loop(p, opt, steps: int) -> np.ndarray:
    import torch

    out = [p.detach().numpy()[0].copy()]
    for _ in range(steps):
        p.grad = torch.from_numpy(grad(p.detach().numpy()))
        opt.step()
        out.append(p.detach().numpy()[0].copy())
    return np.array(out)


def run_torch(mod, cfg: Config, steps: int = STEPS) -> np.ndarray:
    """``adamp_torch.SGDP`` on a float64 ``(1, 2)`` parameter."""
    import torch

    p = torch.nn.Parameter(torch.tensor(W0, dtype=torch.float64))
    opt = mod.SGDP([p], lr=LR, momentum=cfg.momentum, delta=cfg.delta)
    return _torch_loop(p, opt, steps)


def run_jax(mod, cfg: Config, steps: int = STEPS) -> np.ndarray:
    """``adamp_jax.sgdp`` in float64; ``channel_axis=0`` names the row of the ``(1, 2)`` weight."""
    import jax
    import jax.numpy as jnp
    import optax

    with jax.enable_x64(True):
        tx = mod.sgdp(LR, momentum=cfg.momentum, delta=cfg.delta, channel_axis=0)
        params = jnp.asarray(W0, dtype=jnp.float64)
        state = tx.init(params)
        update = jax.jit(tx.update)
        out = [np.asarray(params)[0]]
        for _ in range(steps):
            g = jnp.asarray(grad(np.asarray(params)))
            u, state = update(g, state, params)
            params = optax.apply_updates(params, u)
            out.append(np.asarray(params)[0])
    return np.array(out)


def run_keras(mod, cfg: Config, steps: int = STEPS) -> np.ndarray:
    """``adamp_keras.SGDP`` on a float64 ``keras.Variable``; ``channel_axis=0`` as for jax.

    On the TensorFlow backend the step runs as one ``tf.function`` (eager Keras steps cost
    about 6 ms each here); on the others, eagerly.
    """
    import keras

    var = keras.Variable(W0, dtype="float64")
    # Keras keeps the learning rate in a variable of dtype floatx (float32 by default), which
    # would step with 0.01 rounded to float32: build the optimizer under float64, as jax's x64.
    floatx = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        opt = mod.SGDP(learning_rate=LR, momentum=cfg.momentum, delta=cfg.delta, channel_axis=0)
        opt.build([var])
    finally:
        keras.config.set_floatx(floatx)

    def apply(g):
        opt.apply([g], [var])

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        apply = tf.function(apply)
    out = [W0[0].copy()]
    for _ in range(steps):
        apply(keras.ops.convert_to_tensor(grad(keras.ops.convert_to_numpy(var)), dtype="float64"))
        out.append(keras.ops.convert_to_numpy(var)[0].copy())
    return np.array(out)


RUNNERS = {"adamp_torch": run_torch, "adamp_jax": run_jax, "adamp_keras": run_keras}


def plot(trajectories: dict[str, np.ndarray], path) -> None:
    """The plane near the unit circle and in full, |w| against step, loss against step."""
    import matplotlib.pyplot as plt

    fig, (az, ax, an, al) = plt.subplots(1, 4, figsize=(20, 5.2))
    t = np.linspace(0, 2 * math.pi, 400)
    colors = plt.get_cmap("tab10")
    for a in (az, ax):
        a.plot(np.cos(t), np.sin(t), color="0.6", lw=1, label="unit circle")
    for i, (name, tr) in enumerate(trajectories.items()):
        style = dict(color=colors(i), lw=1.4, ls="--" if name.startswith("GD") else "-")
        for a in (az, ax):
            a.plot(tr[:, 0], tr[:, 1], label=name, **style)
        an.plot(np.linalg.norm(tr, axis=1), **style, label=name)
        al.plot([loss(w) for w in tr], **style, label=name)
    for a in (az, ax):
        a.plot(*W0[0], "ko", label="w0")
        a.plot(*W_STAR, "k*", ms=12, label="w* (direction)")
        a.set_aspect("equal")
    az.set_xlim(-1.6, 1.6)
    az.set_ylim(-1.6, 1.6)
    az.set_title("w on the plane, near the unit circle")
    az.legend(fontsize=7, loc="center left")
    ax.set_title("w on the plane, full extent")
    an.set_yscale("log")
    an.set_title("|w| against step")
    al.set_yscale("log")
    al.set_title("loss (1 - cos(w, w*))^2")
    for a in (an, al):
        a.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
