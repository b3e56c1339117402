"""AdamP and SGDP for Keras 3, on every Keras backend (TensorFlow, JAX, PyTorch).

Kernels are grouped by their output-channel axis: by default the one of the layer that owns
each kernel when the optimizer is built for a model's variables (-2 for transposed
convolutions, 0 for embeddings), else the last one, as in Keras' layout; ``channel_axes(model)``
gives the same table as an explicit mapping. Sparse gradients (``tf.IndexedSlices``, JAX
``BCOO``) give the step of the same gradient densified.
The semantics are those of the NumPy reference ``adamp_core`` (equations A1-A8, S1-S6, P1-P5 and
decisions D1-D10); hyperparameters go through its validator.

Example::

    import keras
    from adamp_keras import AdamP

    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(16, 3), ...])
    model.compile(optimizer=AdamP(1e-3, weight_decay=1e-2),
                  loss="sparse_categorical_crossentropy")
"""

from adamp_keras._channel_axes import channel_axes
from adamp_keras.adamp import AdamP
from adamp_keras.sgdp import SGDP

__all__ = ["SGDP", "AdamP", "channel_axes"]
