"""The projection Pi (P1-P5) in ``keras.ops``, and what AdamP and SGDP share in Keras.

The decision is taken with tensor ops (``ops.where`` on a 0-d boolean), never in Python, so the
step traces once under ``tf.function``, XLA and ``jax.jit`` and needs no host synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import keras
from keras import ops

from adamp_core import check_channel_axis, validate_hyperparameters
from adamp_keras._channel_axes import owner_axes

ChannelAxis = int | Mapping[str, int] | Callable[[Any], int] | None

_HALF = ("float16", "bfloat16")
_BACKEND = keras.backend.backend()


def densify(gradient, variable):
    """A sparse gradient as the dense one of ``variable``'s shape, else the gradient as it is.

    Sparse gradients are ``tf.IndexedSlices`` (TensorFlow: ``Embedding``, ``ops.take``), JAX
    ``BCOO`` and PyTorch sparse COO tensors; values at duplicate indices are summed, as densifying
    them does. The step needs the dense form anyway: the decision (P2, P3) takes sums over whole
    rows and over the whole tensor, Adam's moments decay on rows without gradient too (A2, A3),
    and the weight decay and the projection touch every row. So one dense tensor is formed, in
    the gradient's dtype, and the step is the dense step, on every path and backend.
    """
    if _BACKEND == "tensorflow":
        from adamp_keras._tf import densify as tf_densify

        return tf_densify(gradient, tuple(variable.shape))
    if _BACKEND == "jax":
        from jax.experimental import sparse

        return gradient.todense() if isinstance(gradient, sparse.JAXSparse) else gradient
    if _BACKEND == "torch" and getattr(gradient, "is_sparse", False):
        return gradient.to_dense()
    return gradient


def check_real(optimizer: str, variables) -> None:
    """Raises for a complex variable: the projection and Adam's moments are defined for real
    weights only (``g * g`` is not ``|g|^2`` for a complex g), and a step on the real part alone
    would be silently wrong."""
    for v in variables:
        dtype = keras.backend.standardize_dtype(v.dtype)
        if "complex" in dtype:
            path = getattr(v, "path", getattr(v, "name", "?"))
            raise ValueError(
                f"{optimizer} supports real floating-point variables only; variable {path!r} "
                f"has dtype {dtype}. Train its real and imaginary parts as two real variables."
            )


def compute_dtype(dtype: Any) -> str:
    """D9: float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return "float64" if keras.backend.standardize_dtype(dtype) == "float64" else "float32"


def bias_correction(beta: float, t, dtype: str):
    """``1 - beta^t``, computed as ``-expm1(t log beta)`` with ``log beta`` taken in float64.

    Casting ``beta = 0.999`` to float32 first (as ``1 - ops.power(beta, t)`` does) puts a
    relative error of about 1e-5 into ``1 - beta`` at t = 1; this form keeps about 1e-7 in float32
    and agrees with the reference's float64 ``1 - beta**t`` to a few ulps.
    """
    log_beta = math.log(beta) if beta > 0 else -math.inf
    # ops.cast would round a Python float through float32 first; convert_to_tensor does not.
    return -ops.expm1(ops.cast(t, dtype) * ops.convert_to_tensor(log_beta, dtype=dtype))


def _row_sum(x):
    """Sums a ``(rows / k, k, C, after)`` view over every axis but C, in two stages.

    Stage 1 sums each block of k consecutive rows (and ``after``), stage 2 the ``rows / k``
    partial sums; k is the largest of 16, 8, 4, 2, 1 that divides the rows (of 4, 8 and 16,
    16 was fastest). XLA on CPU (TensorFlow 2.21, ``jit_compile``) rewrites a one-stage sum over
    the rows of a channel-last kernel into a reduce-window with strided reads; the two stages
    took 0.4-0.5 ms against 2.1-2.6 ms for ``sum(g * p)`` over a 3x3x512x512 kernel, and
    without XLA 1.4 ms against 1.2 ms (2 shared CPU cores). XLA's simplifier would merge the
    two sums back into one, and the layer view's sum of these sums into a second full-size
    reduction: ``where(isnan(s), nan, s)``, an identity, keeps them apart.
    """
    s = ops.sum(x, axis=(1, 3))
    s = ops.where(ops.isnan(s), float("nan"), s)
    return ops.sum(s, axis=0)


def project(p, g, u, *, axis: int, delta: float, wd_ratio: float, eps: float, g2=None, apply=True):
    """(P1)-(P5) on one eligible parameter (ndim >= 2, non-empty), all tensors in one dtype.

    The channel view reduces a ``(before, C, after)`` view of each tensor over its outer axes
    in two stages (``_row_sum``: no transpose); the layer view sums the per-channel sums.
    (P4) is applied as ``u - p * c`` with
    ``c = <p, u> / (|p| + eps)^2`` per row, which equals ``u - p_hat <p_hat, u>``; one
    ``ops.where`` picks the coefficient of the view that fired (channel first, D3), or 0.

    Args:
      g2: ``g * g`` when the caller has it already (AdamP's second moment), to save a pass.
      apply: False returns the per-row coefficient ``c`` in place of the projected ``u``, for
        callers that fold ``-a p c`` into their own update of ``p`` (one pass fewer).

    Returns:
      ``(u or c, r, fired_channel, fired_layer)``; the flags are 0-d booleans.
    """
    shape = tuple(p.shape)
    n_layer = math.prod(shape)
    n_channel = n_layer // shape[axis]
    before = math.prod(shape[:axis])
    k = next(k for k in (16, 8, 4, 2, 1) if before % k == 0)
    view = (before // k, k, shape[axis], math.prod(shape[axis + 1 :]))
    keep = tuple(c if a == axis else 1 for a, c in enumerate(shape))  # broadcasts against p

    def row_sum(x):
        return ops.reshape(_row_sum(ops.reshape(x, view)), keep)

    gp, gg, pp = row_sum(g * p), row_sum(g * g if g2 is None else g2), row_sum(p * p)
    gp_l, gg_l, pp_l = ops.sum(gp), ops.sum(gg), ops.sum(pp)

    def cosine(gp, gg, pp):  # (P2), D1, D2
        return ops.abs(gp) / (ops.maximum(ops.sqrt(gg), eps) * ops.maximum(ops.sqrt(pp), eps))

    # P3, channel view: max(cos) < threshold, written as "every row below it" so that a NaN
    # cosine (inf / inf at the dtype's edges, D10) keeps the view from firing, as NumPy's
    # NaN-propagating max does; TensorFlow's reduce_max and XLA's may drop NaN.
    fired_c = ops.all(cosine(gp, gg, pp) < delta / math.sqrt(n_channel))
    fired_l = ops.logical_and(  # P3, layer view, tried only if the channel view did not fire
        ops.logical_not(fired_c), cosine(gp_l, gg_l, pp_l) < delta / math.sqrt(n_layer)
    )
    pu = row_sum(p * u)
    coef_c = pu / ops.square(ops.sqrt(pp) + eps)  # P4 on channel rows
    coef_l = ops.sum(pu) / ops.square(ops.sqrt(pp_l) + eps)  # P4 on the whole tensor
    coef = ops.where(fired_c, coef_c, ops.where(fired_l, coef_l, ops.zeros_like(coef_l)))
    if apply:
        u = u - p * coef
    fired = ops.logical_or(fired_c, fired_l)
    one = ops.ones((), dtype=u.dtype)
    r = ops.where(fired, ops.convert_to_tensor(wd_ratio, dtype=u.dtype), one)  # P5
    return (u if apply else coef), r, fired_c, fired_l


def lookup_path(mapping: Mapping[str, int], path: str) -> int | None:
    """The entry of the longest key that is ``path`` or a ``/``-suffix of it, else None.

    A model loaded with ``keras.saving.load_model`` may name ``sequential/dense/kernel`` as
    ``dense/kernel``, so ``channel_axes`` writes paths relative to the model and the lookup
    accepts any prefix in front of them.
    """
    parts = path.split("/")
    for k in range(len(parts)):
        key = "/".join(parts[k:])
        if key in mapping:
            return mapping[key]
    return None


def _path_name(variable) -> str:
    """A variable's path as one name, the form Keras' ``add_variable_from_reference`` uses, so
    that the state of two variables never shares a path."""
    return getattr(variable, "path", variable.name).replace("/", "_")


class ProjectedOptimizer(keras.optimizers.Optimizer):
    """What AdamP and SGDP share: channel axes, their own weight decay, projection counters."""

    def __init__(
        self,
        learning_rate,
        *,
        names: Mapping[str, str],
        hyperparameters: Mapping[str, Any],
        weight_decay: float | None,
        channel_axis: ChannelAxis,
        track_projection: bool,
        **kwargs,
    ):
        weight_decay = 0.0 if weight_decay is None else weight_decay  # Keras' "no decay"
        validate_hyperparameters(
            names=names,
            lr=None if callable(learning_rate) else learning_rate,  # schedules are not checked
            weight_decay=weight_decay,
            **hyperparameters,
        )
        if isinstance(channel_axis, bool) or not (
            channel_axis is None
            or isinstance(channel_axis, int | Mapping)
            or callable(channel_axis)
        ):
            raise ValueError(
                "channel_axis must be None (from the layer owning each kernel), an int, a mapping "
                "from variable path to int (as returned by channel_axes(model)), or a callable on "
                f"the variable (got {channel_axis!r})"
            )
        if not isinstance(track_projection, bool):
            raise ValueError(f"track_projection must be True or False (got {track_projection!r})")
        # The base class would decay every variable by lr * wd before the step; AdamP and SGDP
        # decay by lr * wd * r (A7, S4): see _apply_weight_decay below.
        super().__init__(learning_rate=learning_rate, weight_decay=float(weight_decay), **kwargs)
        self.channel_axis = channel_axis
        self.track_projection = track_projection

    def _apply_weight_decay(self, variables):
        """Disabled: the decay is applied inside ``update_step`` with the factor r (A7, S4).

        ``exclude_from_weight_decay`` still applies, through ``_use_weight_decay``.
        """

    def _resolve_axis(self, variable) -> int | None:
        """The channel axis of one model variable (None when it is never projected, D4)."""
        spec = self.channel_axis
        if spec is None:  # the owning layer's axis where it was found, else Keras' -1
            axis = self._owner_axes.get(id(variable), -1)
        elif isinstance(spec, Mapping):
            path = getattr(variable, "path", variable.name)
            axis = lookup_path(spec, path)
            if axis is None and len(variable.shape) < 2:
                return None  # D4: never projected, needs no entry
            if axis is None:
                raise ValueError(
                    f"channel_axis mapping has no entry for variable {path!r}: pass "
                    "channel_axes(model) of the model whose variables are trained"
                )
        elif callable(spec):
            axis = spec(variable)
        else:
            axis = spec
        axis = check_channel_axis(axis, tuple(variable.shape))
        if axis is None or math.prod(variable.shape) == 0:
            return None
        return axis

    def _state_variable(self, variable, name: str):
        """A zero state variable for ``variable``, in float32 for half-precision variables (D9)."""
        if keras.backend.standardize_dtype(variable.dtype) in _HALF:
            name = f"{_path_name(variable)}_{name}"
            return self.add_variable(variable.shape, dtype="float32", name=name)
        return self.add_variable_from_reference(variable, name=name)

    def build(self, variables):
        if self.built:
            return
        check_real(type(self).__name__, variables)  # before any state is made
        # Frames above this one (Keras' trainer, the caller of build) hold the model.
        self._owner_axes = owner_axes(variables) if self.channel_axis is None else {}
        axes = [self._resolve_axis(v) for v in variables]  # raises before any state is made
        super().build(variables)
        self._axes = axes
        self._compiled = None  # see _project
        self._projection_counts = [
            self.add_variable((2,), dtype="int32", name=f"{_path_name(v)}_projection_counts")
            if self.track_projection and axis is not None
            else None
            for v, axis in zip(variables, self._axes, strict=True)
        ]

    def _begin(self, gradient, variable, learning_rate):
        """``(i, lr, p, g)`` in the compute dtype (D9), or None for a zero-size variable (D4)."""
        if 0 in tuple(variable.shape):
            return None
        i = self._get_variable_index(variable)
        dt = compute_dtype(variable.dtype)
        g = ops.cast(densify(gradient, variable), dt)
        return i, ops.cast(learning_rate, dt), ops.cast(variable, dt), g

    def _project(self, i: int, p, g, u, g2=None, apply=True, direction=None):
        """(A6), (S3): ``(u, r)``, projected when the variable is tested and a view fires;
        with ``apply=False``, ``(c, r)``: the projection is ``u - p * c`` (``c = 0`` when
        nothing fired or the variable is not tested).

        ``direction``: TensorFlow backend outside XLA only. ``u`` is then an input ``x`` from
        which ``direction(g, x)`` forms the direction, and the direction, the four channel sums
        and the decision run as one XLA-compiled function (``apply`` must be False). Outside
        XLA every TensorFlow operation writes its result; there, each product is fused into
        its sum and the direction is never stored.
        """
        axis = self._axes[i]
        if axis is None:  # D4: ndim <= 1
            return (u if apply else 0.0), 1.0
        hp = dict(delta=self.delta, wd_ratio=self.wd_ratio, eps=self.epsilon)
        if direction is None:
            u, r, fired_c, fired_l = project(p, g, u, axis=axis, **hp, g2=g2, apply=apply)
        else:
            if self._compiled is None:  # one function per (shape, dtype, axis)
                from adamp_keras._tf import Compiled

                self._compiled = Compiled(
                    lambda key: (
                        lambda p, g, x: project(
                            p, g, direction(g, x), axis=key[2], **hp, apply=False
                        )
                    )
                )
            key = (tuple(p.shape), keras.backend.standardize_dtype(p.dtype), axis)
            u, r, fired_c, fired_l = self._compiled(key, p, g, u)
        counts = self._projection_counts[i]
        if counts is not None:
            self.assign_add(counts, ops.cast(ops.stack([fired_c, fired_l]), "int32"))
        return u, r

    def _decays(self, i: int) -> bool:
        """Whether weight decay applies to variable ``i`` (``exclude_from_weight_decay``)."""
        return bool(self.weight_decay) and self._use_weight_decay(self._trainable_variables[i])

    def projection_counts(self) -> dict[str, tuple[int, int]]:
        """Per variable path: ``(channel, layer)``, the number of steps in which each view fired.

        Needs ``track_projection=True``; variables that are never tested (ndim <= 1) are absent.
        Divide by ``int(optimizer.iterations)`` for the share of steps that were projected.
        """
        if not self.track_projection:
            raise ValueError(
                "projection_counts() needs the optimizer built with track_projection=True"
            )
        if not self.built:
            return {}
        out = {}
        for v, counts in zip(self._trainable_variables, self._projection_counts, strict=True):
            if counts is not None:
                c, layer = (int(x) for x in keras.ops.convert_to_numpy(counts))
                out[getattr(v, "path", v.name)] = (c, layer)
        return out

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        axis = self.channel_axis
        if isinstance(axis, Mapping):
            axis = dict(axis)
        elif callable(axis):  # must be registered with keras.saving.register_keras_serializable
            axis = keras.saving.serialize_keras_object(axis)
        config.update({"channel_axis": axis, "track_projection": self.track_projection})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        axis = config.get("channel_axis")
        if isinstance(axis, dict) and "class_name" in axis:  # a serialized callable
            config = {
                **config,
                "channel_axis": keras.saving.deserialize_keras_object(
                    axis, custom_objects=custom_objects
                ),
            }
        return super().from_config(config, custom_objects=custom_objects)
