"""Per-leaf resolution of ``channel_axis`` and ``mask`` against a parameter pytree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from adamp_jax._projection import static_axis


def _broadcast(name: str, prefix: Any, params: Any) -> list:
    """The leaves of ``prefix`` (a pytree equal to, or a prefix of, ``params``) per param leaf."""
    leaves, treedef = jax.tree.flatten(params)
    try:
        full = jax.tree.broadcast(prefix, params)
        out = treedef.flatten_up_to(full)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{name} must be a pytree with the structure of params (or a prefix of it): {e}"
        ) from None
    assert len(out) == len(leaves)
    return out


def channel_axes(channel_axis: Any, params: Any) -> list:
    """One axis per leaf of ``params`` from an int, a pytree of ints, or ``(path, leaf) -> int``.

    Each axis is checked against its leaf's shape (``adamp_core.check_channel_axis``); a traced
    int (from ``optax.inject_hyperparams``) is passed through.
    """
    if callable(channel_axis):
        paths_leaves, _ = jax.tree_util.tree_flatten_with_path(params)
        axes = [channel_axis(path, leaf) for path, leaf in paths_leaves]
    elif _is_int(channel_axis):
        axes = [channel_axis] * len(jax.tree.leaves(params))
    else:
        axes = _broadcast("channel_axis", channel_axis, params)
    for axis, leaf in zip(axes, jax.tree.leaves(params), strict=True):
        if not _is_int(axis):
            raise ValueError(f"channel_axis must be an integer for every leaf (got {axis!r})")
        static_axis(axis, jnp.shape(leaf))  # raises on an axis outside [-ndim, ndim)
    return axes


def _is_int(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, np.integer)):
        return True
    return isinstance(x, (jax.Array, np.ndarray)) and x.ndim == 0 and x.dtype.kind in "iu"


def decay_mask(mask: Any | Callable[[Any], Any] | None, params: Any) -> list[bool]:
    """``optax.add_decayed_weights``' mask: True where weight decay applies, one bool per leaf."""
    n = len(jax.tree.leaves(params))
    if mask is None:
        return [True] * n
    tree = mask(params) if callable(mask) else mask
    out = _broadcast("mask", tree, params)
    try:
        return [bool(m) for m in out]
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise ValueError("mask leaves must be Python or concrete booleans") from None


def is_placeholder(params: Any) -> bool:
    """True for a params tree without leaves, such as the placeholder that
    ``optax.tree.map_params`` passes to ``init``: there is nothing to check against it."""
    return not jax.tree.leaves(params)


def leaf_dtypes(params: Any) -> list[np.dtype]:
    """The dtype of each leaf as JAX holds it (float64 is float32 when x64 is off; a Python
    float is float32), checked to be real: floating or integer.

    Complex leaves are an error: the projection's cosines and norms are defined for real
    weights, and a real-only step would leave the imaginary part where it is. Integer leaves
    are computed in float32, as optax's optimizers compute them.
    """
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        dt = leaf.dtype if hasattr(leaf, "dtype") else jnp.result_type(leaf)
        dt = jax.dtypes.canonicalize_dtype(dt)
        if not (jnp.issubdtype(dt, jnp.floating) or jnp.issubdtype(dt, jnp.integer)):
            where = jax.tree_util.keystr(path) or "the params"
            kind = "complex" if jnp.issubdtype(dt, jnp.complexfloating) else "not a real number"
            raise ValueError(
                f"adamp_jax supports real floating or integer params; {where} has dtype {dt} "
                f"({kind}). For a complex weight, optimise its real and imaginary parts as two "
                "real leaves (jnp.real / jnp.imag), or mask it out with optax.masked."
            )
        out.append(dt)
    return out
