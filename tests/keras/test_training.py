"""Training through ``compile`` + ``fit``: compile modes, mixed precision, a CNN with
BatchNormalization whose kernels must be detected as scale-invariant, and MirroredStrategy."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from adamp_keras import SGDP, AdamP, channel_axes

from tests.keras.helpers import BACKEND

OPTIMIZERS = {
    "adamp": lambda **kw: AdamP(1e-2, weight_decay=1e-2, **kw),
    "sgdp": lambda **kw: SGDP(5e-2, momentum=0.9, nesterov=True, weight_decay=1e-3, **kw),
}


def regression_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype("float32")
    y = np.tanh(x @ rng.standard_normal((6, 2))).astype("float32")
    return x, y


def mlp(synchronized=False):
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, use_bias=False),
            keras.layers.BatchNormalization(synchronized=synchronized),
            keras.layers.ReLU(),
            keras.layers.Dense(2),
            keras.layers.Activation("linear", dtype="float32"),  # float32 loss under mixed
        ]
    )


# torch.compile (what jit_compile=True means on the torch backend) is not XLA and takes minutes
# to compile on CPU: opt-in there.
JIT = [False, pytest.param(True, marks=pytest.mark.slow) if BACKEND == "torch" else True]


@pytest.mark.parametrize("jit_compile", JIT, ids=["no-jit", "jit"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fit_decreases_loss(name, jit_compile, fresh_keras):
    x, y = regression_data()
    model = mlp()
    model.compile(optimizer=OPTIMIZERS[name](), loss="mse", jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history["loss"]
    assert np.isfinite(history).all()
    assert history[-1] < 0.7 * history[0]


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_mixed_precision(name, policy, fresh_keras):
    # Variables stay float32 and the step runs in float32 (D9); under mixed_float16 compile()
    # wraps the optimizer in a LossScaleOptimizer, whose inner optimizer is ours.
    keras.config.set_dtype_policy(policy)
    x, y = regression_data()
    model = mlp()
    model.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history["loss"]
    opt = model.optimizer
    if policy == "mixed_float16":
        assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
        opt = opt.inner_optimizer
    assert type(opt) is type(OPTIMIZERS[name]())
    assert {v.dtype for v in model.trainable_variables} == {"float32"}
    assert np.isfinite(history).all()
    assert history[-1] < 0.8 * history[0]


def cnn():
    """Two conv kernels, each followed by BatchNormalization (scale-invariant per output
    channel), and a dense head that is not."""
    keras.utils.set_random_seed(2)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3, use_bias=False, name="conv1"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Conv2D(8, 3, use_bias=False, name="conv2"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, name="head"),
        ]
    )


def image_data(n=96, seed=0):
    # Labels from a fixed random linear teacher on the mean colour of each image, so the loss
    # can decrease within a few epochs.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 8, 3)).astype("float32")
    y = np.argmax(x.mean(axis=(1, 2)) @ rng.standard_normal((3, 3)), axis=1)
    return x, y


EPOCHS, BATCH = 4, 16  # 6 steps per epoch, 24 in all
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_cnn_kernels_are_detected_with_the_default_axis(name, fresh_keras):
    x, y = image_data()
    model = cnn()
    opt = OPTIMIZERS[name](track_projection=True)
    model.compile(optimizer=opt, loss=CE)
    history = model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0).history["loss"]
    assert history[-1] < history[0]

    counts = opt.projection_counts()
    steps = int(opt.iterations)
    assert steps == EPOCHS * len(x) // BATCH
    # A kernel followed by BatchNormalization has, per output channel, a gradient orthogonal to
    # its weights (scale invariance; BN's own epsilon makes it approximate): the channel view
    # fires on every step with the output-channel axis -1.
    for conv in ("conv1", "conv2"):
        assert counts[f"sequential/{conv}/kernel"] == (steps, 0)
    # The head is not scale-invariant: its gradient passes the layer test at chance, about
    # P(|N(0, 1)| < delta) = 8% of the steps for delta = 0.1; a quarter leaves ample room.
    assert sum(counts["sequential/head/kernel"]) <= 0.25 * steps


def test_cnn_kernels_at_chance_with_axis_zero(fresh_keras):
    # With channel_axis=0 a "row" is one kernel row, holding every output channel: its gradient
    # is no longer orthogonal to it, and the channel view fires at the rate of chance (a maximum
    # of 3 cosines below delta / sqrt(n); about 0.08^3 for random directions). The layer view
    # still sees the whole kernel orthogonal to its gradient, so the kernel is projected, but
    # as one row instead of eight.
    x, y = image_data()
    model = cnn()
    opt = AdamP(1e-2, channel_axis=0, track_projection=True)
    model.compile(optimizer=opt, loss=CE)
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)
    counts, steps = opt.projection_counts(), int(opt.iterations)
    for conv in ("conv1", "conv2"):
        channel, layer = counts[f"sequential/{conv}/kernel"]
        assert channel <= 0.1 * steps
        assert channel + layer == steps


def test_channel_axes_helper_in_fit(fresh_keras):
    # A transposed convolution keeps its output channels on axis -2: with channel_axes(model)
    # its kernel (followed by BatchNormalization) is detected per channel on every step.
    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((4, 4, 3)),
            keras.layers.Conv2DTranspose(6, 3, use_bias=False, name="up"),
            keras.layers.BatchNormalization(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ]
    )
    x, y = image_data(48)
    x = x[:, :4, :4, :]
    opt = AdamP(1e-2, channel_axis=channel_axes(model), track_projection=True)
    assert channel_axes(model)["up/kernel"] == -2
    model.compile(optimizer=opt, loss=CE)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert opt.projection_counts()["sequential/up/kernel"] == (int(opt.iterations), 0)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute is TensorFlow's")
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_mirrored_strategy_two_cpus(name, fresh_keras):
    # Two replicas each see half of every batch; with BatchNormalization synchronized across
    # them, the all-reduced gradient equals the one of the whole batch up to float32 rounding,
    # so the result matches one-device training closely.
    import tensorflow as tf

    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("TensorFlow was initialised before tests/keras/conftest.py split the CPU")
    x, y = regression_data()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = mlp(synchronized=True)
        model.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history
    for v in model.optimizer.variables:  # replicas stay in sync
        values = getattr(v.value, "values", None)
        if values is not None and len(values) == 2:
            np.testing.assert_array_equal(values[0].numpy(), values[1].numpy())

    single = mlp(synchronized=True)
    single.compile(optimizer=OPTIMIZERS[name](), loss="mse")
    reference = single.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    np.testing.assert_allclose(history["loss"], reference["loss"], rtol=1e-4)
    for a, b in zip(model.weights, single.weights, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=1e-5)
