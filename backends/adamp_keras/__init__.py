"""AdamP and SGDP for Keras 3, on every Keras backend (TensorFlow, JAX, PyTorch).

Kernels are grouped by their output-channel axis, which is the last one in Keras' layout
(``channel_axis=-1``); use ``channel_axes(model)`` when the model has transposed convolutions.
The semantics are those of the NumPy reference ``adamp_core`` (equations A1-A8, S1-S6, P1-P5 and
decisions D1-D9); hyperparameters go through its validator.

Example::

    import keras
    from adamp_keras import AdamP, channel_axes

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(16, 3), ...])
    model.compile(optimizer=AdamP(1e-3, weight_decay=1e-2, channel_axis=channel_axes(model)),
                  loss="sparse_categorical_crossentropy")
"""

from adamp_keras._channel_axes import channel_axes
from adamp_keras.adamp import AdamP
from adamp_keras.sgdp import SGDP

__all__ = ["SGDP", "AdamP", "channel_axes"]
