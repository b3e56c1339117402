"""Running adamp_keras optimizers on bare variables, and comparing with the reference."""

from __future__ import annotations

import adamp_keras
import keras
import numpy as np

from adamp_core import decide
from adamp_core.testing import rel_err

# Relative error allowed per dtype, measured against max |reference| of the tensor (an update
# that cancels a weight leaves a rounding error of the weight's size, not of the result's).
# float64: the bound (same operation order as the reference, D8); float16: one ulp of
# float16 (2^-10), since the math runs in float32 and only the stored result is rounded (D9);
# "float32-scale": float64 values scaled by a factor that went through float32 (2^-24 and more).
REL_TOL = {"float64": 1e-12, "float16": 2.0**-10, "float32-scale": 1e-7}
BACKEND = keras.backend.backend()

STATE_NAMES = {"adamp": ("exp_avg", "exp_avg_sq"), "sgdp": ("momentum_buffer",)}


def keras_kwargs(optimizer: str, hp: dict) -> dict:
    """The reference's hyperparameter names in Keras spelling."""
    hp = dict(hp)
    out = {"learning_rate": hp.pop("lr")}
    if "betas" in hp:
        out["beta_1"], out["beta_2"] = hp.pop("betas")
    if "eps" in hp:
        out["epsilon"] = hp.pop("eps")
    return {**out, **hp}


def make(optimizer: str, hp: dict, **extra) -> keras.optimizers.Optimizer:
    cls = {"adamp": adamp_keras.AdamP, "sgdp": adamp_keras.SGDP}[optimizer]
    return cls(**keras_kwargs(optimizer, hp), **extra)


def state_arrays(opt, variable, optimizer: str) -> list[np.ndarray]:
    """The optimizer's state of ``variable`` (a keras.Variable named ``w``), reference order."""
    by_name = {v.name: v for v in opt.variables}
    out = []
    for name in STATE_NAMES[optimizer]:
        v = by_name.get(f"{variable.path.replace('/', '_')}_{name}")
        out.append(None if v is None else keras.ops.convert_to_numpy(v))
    return out


def run(opt, param: np.ndarray, grads, optimizer: str, dtype=None):
    """Applies ``grads`` one by one; returns ``[(param, [state...]), ...]`` after every step."""
    var = keras.Variable(param, dtype=dtype or param.dtype, name="w")
    out = []
    for g in grads:
        opt.apply([keras.ops.convert_to_tensor(g, dtype=var.dtype)], [var])
        out.append((keras.ops.convert_to_numpy(var), state_arrays(opt, var, optimizer)))
    return out


def assert_close(actual, expected, dtype: str = "float64", what: str = "") -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    err = rel_err(actual, expected)
    assert err <= REL_TOL[dtype], f"{what}: relative error {err:.3g} > {REL_TOL[dtype]:.3g}"


def views(param: np.ndarray, grads, trajectory, hp: dict, axis: int) -> list[str | None]:
    """The reference's decision at every step (on the parameter before the step)."""
    ps = [param] + [p for p, _ in trajectory[:-1]]
    return [
        decide(p, g, delta=hp.get("delta", 0.1), eps=hp.get("eps", 1e-8), channel_axis=axis).view
        for p, g in zip(ps, grads, strict=True)
    ]
