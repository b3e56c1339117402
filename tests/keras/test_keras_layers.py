"""The default channel axis (``channel_axis=None``) comes from the layer that owns each kernel.

For each layer type the expected axis is found numerically, not from the table: a kernel
followed by a normalisation is scale-invariant along its output-channel axis, so the expected
axis is the one (of those longer than 1) along which scaling the kernel's slices by positive
factors leaves the normalised output unchanged. BatchNormalization follows the layers that
feed channels to the next layer; LayerNormalization follows the Embedding, as in a
transformer.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from adamp_keras import SGDP, AdamP, channel_axes
from keras import layers

LAYERS = {
    "Dense": ((6,), lambda: layers.Dense(5), layers.BatchNormalization),
    "Conv2D": ((6, 6, 3), lambda: layers.Conv2D(4, 3), layers.BatchNormalization),
    "Conv1DTranspose": ((5, 3), lambda: layers.Conv1DTranspose(4, 3), layers.BatchNormalization),
    "Conv2DTranspose": (
        (5, 5, 3),
        lambda: layers.Conv2DTranspose(4, 3),
        layers.BatchNormalization,
    ),
    "DepthwiseConv2D": (
        (6, 6, 3),
        lambda: layers.DepthwiseConv2D(3, use_bias=False),
        layers.BatchNormalization,
    ),
    "Embedding": ((7,), lambda: layers.Embedding(9, 4), layers.LayerNormalization),
}


def model_of(name: str) -> tuple[keras.Model, keras.Variable, np.ndarray]:
    shape, layer, norm = LAYERS[name]
    keras.utils.set_random_seed(0)
    first = layer()
    dtype = "int32" if name == "Embedding" else "float32"
    model = keras.Sequential([keras.Input(shape, dtype=dtype), first, norm(epsilon=1e-12)])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 9, (16, *shape)) if name == "Embedding" else rng.random((16, *shape))
    kernel = first.embeddings if name == "Embedding" else first.kernel
    return model, kernel, x.astype(dtype)


def invariant_axes(model, kernel, x) -> list[int]:
    """The axes (longer than 1) along which scaling the kernel's slices leaves the output."""
    w = keras.ops.convert_to_numpy(kernel)
    reference = keras.ops.convert_to_numpy(model(x, training=True))
    rng = np.random.default_rng(1)
    out = []
    for axis in range(w.ndim):
        if w.shape[axis] == 1:
            continue
        factors = rng.uniform(0.5, 2.0, [n if a == axis else 1 for a, n in enumerate(w.shape)])
        kernel.assign(w * factors.astype(w.dtype))
        scaled = keras.ops.convert_to_numpy(model(x, training=True))
        if np.allclose(scaled, reference, rtol=1e-3, atol=1e-4):
            out.append(axis)
    kernel.assign(w)
    return out


def resolved_axis(opt, kernel) -> int:
    return opt._axes[opt._get_variable_index(kernel)]


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_default_axis_is_the_normalised_one(name, fresh_keras):
    model, kernel, x = model_of(name)
    (expected,) = invariant_axes(model, kernel, x)
    # Built by fit after compile: Keras' trainer builds the optimizer for the model.
    opt = AdamP(1e-3)
    model.compile(opt, "mse")
    model.fit(x, model.predict(x, verbose=0), epochs=1, verbose=0)
    assert resolved_axis(opt, kernel) == expected
    # Built by the caller on the model's variables.
    opt = SGDP(1e-2)
    opt.build(model.trainable_variables)
    assert resolved_axis(opt, kernel) == expected
    # channel_axes(model) gives the same axes, as an explicit mapping.
    opt = AdamP(1e-3, channel_axis=channel_axes(model))
    opt.build(model.trainable_variables)
    assert resolved_axis(opt, kernel) == expected


def test_explicit_axes_win_and_bare_variables_take_the_last(fresh_keras):
    model, kernel, _ = model_of("Embedding")
    opt = AdamP(1e-3, channel_axis=-1)
    opt.build(model.trainable_variables)
    assert resolved_axis(opt, kernel) == 1
    opt = AdamP(1e-3, channel_axis=lambda v: 1)
    opt.build(model.trainable_variables)
    assert resolved_axis(opt, kernel) == 1
    # A variable that no layer on the calling frames owns: Keras' layout, the last axis.
    opt = AdamP(1e-3)
    opt.build([keras.Variable(np.ones((3, 4), "float32"))])
    assert opt._axes == [1]


def test_a_tied_kernel_is_left_to_the_default(fresh_keras):
    # The embedding table used as a second layer's kernel too: two owners, two axes (0 for
    # the Embedding, -1 as a plain kernel), so the table's rule is not taken.
    class Tied(keras.layers.Layer):
        def __init__(self, table):
            super().__init__()
            self.table = table

        def call(self, h):
            return keras.ops.matmul(h, keras.ops.transpose(self.table))

    embedding = layers.Embedding(9, 4)
    model = keras.Sequential([keras.Input((7,), dtype="int32"), embedding])
    head = Tied(embedding.embeddings)
    opt = AdamP(1e-3)
    opt.build(model.trainable_variables)
    assert head.table is embedding.embeddings
    assert resolved_axis(opt, embedding.embeddings) == 1


@pytest.mark.parametrize("cls", [AdamP, SGDP])
def test_complex_variables_fail_at_build(cls):
    variable = keras.Variable(np.ones((2, 2), "complex64"), dtype="complex64", name="spectrum")
    opt = cls(1e-3)
    with pytest.raises(ValueError, match=r"variable 'spectrum' has dtype complex64"):
        opt.build([keras.Variable(np.ones((2, 2), "float32")), variable])
    assert not opt.built  # nothing made
