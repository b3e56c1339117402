"""Keras backend set-up for the adapter's tests; run once per backend, each in its own process.

``KERAS_BACKEND`` (tensorflow, jax, torch) selects the backend before Keras is imported. Two
process-wide settings must come before any tensor exists, hence here:
  - JAX: float64 arrays need ``jax_enable_x64``, otherwise float64 silently becomes float32.
  - TensorFlow: the CPU is split into two logical devices for the MirroredStrategy test.
"""

from __future__ import annotations

import os

import pytest

BACKEND = os.environ.setdefault("KERAS_BACKEND", "tensorflow")

if BACKEND == "jax":
    import jax

    jax.config.update("jax_enable_x64", True)
elif BACKEND == "tensorflow":
    import tensorflow as tf

    (_cpu,) = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            _cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )
    except RuntimeError:  # TensorFlow already initialised by an earlier import in this process
        pass  # the MirroredStrategy test then skips itself

import keras  # noqa: E402  (after the backend set-up above)


@pytest.fixture
def float64():
    """floatx float64 for the test, so the learning-rate variable Keras creates is float64 too."""
    previous = keras.config.floatx()
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx(previous)


@pytest.fixture
def fresh_keras():
    """Fresh layer names and Keras' default dtype policy again afterwards (models only: the
    reset costs about half a second)."""
    keras.backend.clear_session()
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()
