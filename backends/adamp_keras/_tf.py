"""TensorFlow backend only: what the fused paths of AdamP and SGDP share.

Outside XLA, each TensorFlow operation is its own kernel and a full pass over its tensors. So
AdamP and SGDP hand their element-wise work to TensorFlow's fused training kernels (the ones
behind ``tf.keras``' Adam and momentum SGD), and take the projection's four channel sums and
its decision in one small XLA-compiled function per variable shape, where the products are
fused into the reductions. This module is imported only on that backend.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def handle(variable):
    """The resource handle of a Keras variable or of the ``tf.Variable`` Keras hands to
    ``update_step`` (a replica's component under ``tf.distribute``)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


def in_xla() -> bool:
    """Whether TensorFlow is tracing for XLA (``jit_compile=True``), where XLA fuses the
    element-wise operations itself and the fused kernels would only add traffic.
    TensorFlow has no public test for this; should its internal one move, the answer is False,
    and the fused kernels, which XLA compiles too (the XLA tests pass on them), are used."""
    try:
        from tensorflow.python.ops.control_flow_util import GraphOrParentsInXlaContext
    except ImportError:
        return False
    return bool(GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def densify(gradient, shape):
    """A ``tf.IndexedSlices`` gradient as the dense tensor of ``shape``, the values of duplicate
    indices summed (as ``tf.convert_to_tensor`` does); any other gradient as it is.

    The indices are read through ``tf.convert_to_tensor`` and flattened, so a Python tuple of
    indices (as in Keras' own sparse tests, which ``tf.convert_to_tensor`` of the slices does not
    accept) or an ``(n, 1)`` index tensor work too. ``unsorted_segment_sum`` with the static row
    count also compiles under XLA.
    """
    if not isinstance(gradient, tf.IndexedSlices):
        return gradient
    indices = tf.reshape(tf.convert_to_tensor(gradient.indices), [-1])
    return tf.math.unsorted_segment_sum(tf.convert_to_tensor(gradient.values), indices, shape[0])


def same_dtype(a, b) -> bool:
    """Whether two dtypes (Keras names or TensorFlow dtypes) are the same."""
    return keras.backend.standardize_dtype(a) == keras.backend.standardize_dtype(b)


class Compiled:
    """One ``tf.function(jit_compile=True)`` per key, built on first use by ``make(key)``.

    A plain object for the same reason as ``Scratch``: these functions belong to no saved
    model or checkpoint. One function per key (not one retraced function) keeps TensorFlow's
    retracing warning quiet on models with many distinct shapes.
    """

    def __init__(self, make):
        self._make, self._fns = make, {}

    def __call__(self, key, *args):
        fn = self._fns.get(key)
        if fn is None:
            fn = self._fns[key] = tf.function(self._make(key), jit_compile=True)
        return fn(*args)


class Scratch:
    """One zero-initialised ``tf.Variable`` per distinct (shape, dtype) of ``like``, the target
    ``z`` of the fused kernel in ``AdamP._fused_update``.

    A plain object, so that neither Keras' variable tracking nor TensorFlow's checkpoint
    tracking sees these variables: they are scratch, not optimizer state (a ``.keras`` file
    saved on one backend loads on another). Variables of one shape share a scratch; TensorFlow
    orders the stateful operations on one resource in program order, inside ``tf.function`` too.
    """

    def __init__(self, variables, like):
        self._vars = {}
        for v, m in zip(variables, like, strict=True):
            key = (tuple(v.shape), keras.backend.standardize_dtype(m.dtype))
            if key in self._vars:
                continue
            # init_scope: build() may run while a tf.function is traced
            with tf.init_scope(), tf.distribute.get_strategy().extended.colocate_vars_with(m.value):
                self._vars[key] = tf.Variable(
                    tf.zeros(key[0], key[1]), trainable=False, name="adamp_scratch"
                )

    def get(self, shape, dtype):
        return self._vars[(shape, keras.backend.standardize_dtype(dtype))]

    def nbytes(self) -> int:
        return sum(v.shape.num_elements() * v.dtype.size for v in self._vars.values())
