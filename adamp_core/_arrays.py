"""Array helpers: dtype policy (D9) and the input checks shared by the step functions."""

from __future__ import annotations

import numpy as np

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
