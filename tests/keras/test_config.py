"""Bad inputs, channel axes, configuration round trips, and saving with resumption."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from adamp_keras import SGDP, AdamP, channel_axes

# (class, kwargs, error, message regex): the messages come from adamp_core's validator, in the
# Keras spelling of each argument; nothing is built when they fire.
BAD_INPUTS = [
    (AdamP, dict(learning_rate=-1e-3), ValueError, r"learning_rate must be >= 0 \(got -0.001\)"),
    (AdamP, dict(beta_1=1.0), ValueError, r"beta_1 must be in \[0, 1\) \(got 1.0\)"),
    (AdamP, dict(beta_2=-0.1), ValueError, r"beta_2 must be in \[0, 1\)"),
    (AdamP, dict(epsilon=0.0), ValueError, r"epsilon must be > 0 \(got 0.0\)"),
    (AdamP, dict(weight_decay=-0.1), ValueError, r"weight_decay must be >= 0"),
    (AdamP, dict(delta=-0.1), ValueError, r"delta must be >= 0"),
    (AdamP, dict(wd_ratio=1.5), ValueError, r"wd_ratio must be in \[0, 1\] \(got 1.5\)"),
    (AdamP, dict(nesterov="yes"), ValueError, r"nesterov must be True or False"),
    (AdamP, dict(channel_axis="last"), ValueError, r"channel_axis must be None .*, an int"),
    (AdamP, dict(channel_axis=True), ValueError, r"channel_axis must be None .*, an int"),
    (AdamP, dict(track_projection=1), ValueError, r"track_projection must be True or False"),
    (AdamP, dict(clipnorm=1.0, clipvalue=1.0), ValueError, r"Only one of `clipnorm`"),
    (AdamP, dict(unknown=1), ValueError, r"not recognized"),
    (SGDP, dict(learning_rate=-0.1), ValueError, r"learning_rate must be >= 0"),
    (SGDP, dict(momentum=1.0), ValueError, r"momentum must be in \[0, 1\) \(got 1.0\)"),
    (SGDP, dict(dampening=1.1), ValueError, r"dampening must be in \[0, 1\]"),
    (SGDP, dict(epsilon=-1.0), ValueError, r"epsilon must be > 0"),
    (SGDP, dict(nesterov=True), ValueError, r"nesterov=True requires momentum > 0"),
    (SGDP, dict(project_buffer=2), ValueError, r"project_buffer must be True or False"),
]


@pytest.mark.parametrize(("cls", "kwargs", "error", "message"), BAD_INPUTS, ids=str)
def test_bad_inputs(cls, kwargs, error, message):
    with pytest.raises(error, match=message):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("channel_axis", "message"),
    [
        (2, r"channel_axis must be in \[-2, 2\) for a parameter of shape \(4, 3\) \(got 2\)"),
        (lambda v: 1.5, r"channel_axis must be an integer \(got 1.5\)"),
        ({"other/kernel": 0}, r"no entry for variable 'w'"),
    ],
    ids=["out-of-range", "callable-non-int", "mapping-missing-path"],
)
def test_bad_channel_axis_fails_at_build(channel_axis, message):
    opt = AdamP(channel_axis=channel_axis)
    w = keras.Variable(np.ones((4, 3), np.float32), name="w")
    with pytest.raises(ValueError, match=message):
        opt.build([w])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), 1.0)  # nothing was updated


def test_channel_axis_callable_and_vectors():
    # A callable sees each model variable; 1-D variables accept any axis (never projected, D4).
    seen = []
    opt = SGDP(channel_axis=lambda v: seen.append(v.name) or 0)
    opt.build([keras.Variable(np.ones((4, 3)), name="k"), keras.Variable(np.ones(3), name="b")])
    assert seen == ["k", "b"]


def test_channel_axes_of_keras_layers(fresh_keras):
    # D3: Keras kernels are (..., in, out), transposed convolutions (..., out, in), depthwise
    # kernels (..., in, multiplier); embeddings get one row per token.
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Conv2DTranspose(5, 3, name="deconv")(x)
    x = keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    x = keras.layers.SeparableConv2D(6, 3, name="separable")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2, name="dense")(x)
    inner = keras.Model(inputs, outputs, name="inner")
    outer = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            keras.layers.Embedding(10, 8 * 8 * 3, name="emb"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Reshape((8, 8, 3)),
            inner,
        ],
        name="outer",
    )
    assert channel_axes(outer) == {  # variable paths, as Keras names them
        "emb/embeddings": 0,
        "conv/kernel": -1,
        "deconv/kernel": -2,
        "depthwise/kernel": -2,
        "separable/depthwise_kernel": -2,
        "separable/pointwise_kernel": -1,
        "dense/kernel": -1,
    }
    assert channel_axes(outer, default=0)["dense/kernel"] == 0


def test_channel_axes_needs_a_built_model(fresh_keras):
    with pytest.raises(ValueError, match="needs a built model"):
        channel_axes(keras.Sequential([keras.layers.Dense(2)]))


@keras.saving.register_keras_serializable(package="tests_keras")
def axis_zero(variable) -> int:
    return 0


@pytest.mark.parametrize(
    "opt",
    [
        AdamP(2e-3, beta_1=0.8, weight_decay=0.1, nesterov=True, clipnorm=1.0),
        AdamP(
            keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5),
            channel_axis={"a/kernel": -2, "b/kernel": -1},
            track_projection=True,
        ),
        AdamP(channel_axis=axis_zero, use_ema=True),
        SGDP(0.1, momentum=0.9, project_buffer=True, dampening=0.1, wd_ratio=0.2, delta=0.3),
        SGDP(0.1, momentum=0.9, nesterov=True, gradient_accumulation_steps=2),
    ],
    ids=["adamp", "adamp-schedule-mapping", "adamp-callable", "sgdp", "sgdp-nesterov"],
)
def test_config_round_trip(opt):
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is type(opt)
    assert restored.get_config() == opt.get_config()
    if callable(opt.channel_axis) and not isinstance(opt.channel_axis, dict):
        assert restored.channel_axis is axis_zero


def _data(n=32):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 6)).astype("float32")
    y = (x @ rng.standard_normal((6, 2))).astype("float32")
    return x, y


def _model():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.Dense(2),
        ]
    )


@pytest.mark.parametrize("cls", [AdamP, SGDP])
def test_save_load_resumes_bit_identically(cls, tmp_path, fresh_keras):
    x, y = _data()
    model = _model()
    kwargs = dict(weight_decay=0.01, track_projection=True, channel_axis=channel_axes(model))
    if cls is SGDP:
        kwargs["momentum"] = 0.9
    model.compile(optimizer=cls(1e-2, **kwargs), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is cls
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert int(loaded.optimizer.iterations) == 4
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))

    for m in (model, loaded):
        m.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    for a, b in zip(model.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    # The paths of a reloaded Sequential lose their "sequential/" prefix; the counts are equal.
    counts = model.optimizer.projection_counts(), loaded.optimizer.projection_counts()
    assert list(counts[0].values()) == list(counts[1].values())
    assert counts[0]["sequential/dense/kernel"] == (12, 0)  # kernel before BN: every step
