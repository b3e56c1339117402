"""Array helpers: dtype policy (D9) and the input checks shared by the step functions."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from adamp_core._hyperparams import check_channel_axis, check_grad_shape

_LOW_PRECISION = ("float16", "bfloat16")


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the math runs in: float64 stays float64, everything else runs in float32 (D9)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def as_float_array(x, name: str) -> np.ndarray:
    """Returns ``x`` as a NumPy array of a floating dtype, without copying when possible."""
    a = np.asarray(x)
    if not (np.issubdtype(a.dtype, np.floating) or a.dtype.name in _LOW_PRECISION):
        raise ValueError(f"{name} must be a floating-point array (got dtype {a.dtype})")
    return a


def check_state_shape(param_shape: tuple[int, ...], state: NamedTuple) -> None:
    """Raises ValueError when an array of ``state`` has another shape than the parameter."""
    for name, value in state._asdict().items():
        if isinstance(value, np.ndarray) and value.shape != tuple(param_shape):
            raise ValueError(
                f"state.{name} shape {value.shape} does not match param shape {tuple(param_shape)}"
            )


def prepare(
    param, grad, state: NamedTuple, channel_axis
) -> tuple[np.dtype, np.ndarray, np.ndarray, np.dtype]:
    """Checks a step's inputs; returns ``(param dtype, param, grad, compute dtype)``, the two
    arrays as copies in the compute dtype (D9)."""
    p0, g0 = as_float_array(param, "param"), as_float_array(grad, "grad")
    check_grad_shape(p0.shape, g0.shape)
    check_channel_axis(channel_axis, p0.shape)
    check_state_shape(p0.shape, state)
    dt = compute_dtype(p0.dtype)
    return p0.dtype, p0.astype(dt), g0.astype(dt), dt
