"""Keras' own generic optimizer tests (keras 3.15.1: ``optimizers/optimizer_test.py``,
``adam_test.py``, ``loss_scale_optimizer_test.py``, and the optimizer parts of
``trainers/trainer_test.py`` and ``saving/saving_lib_test.py``), in this project's words.

Every test runs over AdamP and SGDP and over Keras' own AdamW and SGD as controls: a check that
fails for a control is a wrong check, not a finding. Where Keras compares with golden numbers of
one optimizer, the expected value here is either derived from the equations (said where) or the
same optimizer run without the feature under test (an identity of the feature). Sparse gradients
are in ``test_keras_sparse.py``, the default channel axis in ``test_keras_layers.py``.
"""

from __future__ import annotations

import pickle
import warnings

import keras
import numpy as np
import pytest
from adamp_keras import SGDP, AdamP
from keras import ops

from tests.keras.helpers import BACKEND

# weight_decay=0 for all four: AdamW's default (0.004) would make Adam-type identities inexact.
OPTIMIZERS = {
    "AdamP": AdamP,
    "SGDP": SGDP,
    "AdamW": lambda **kw: keras.optimizers.AdamW(**{"weight_decay": 0.0, **kw}),
    "SGD": keras.optimizers.SGD,
}
ADAM_TYPE = {"AdamP", "AdamW"}
OURS = {"AdamP", "SGDP"}


@pytest.fixture(params=sorted(OPTIMIZERS))
def name(request):
    return request.param


def make(name, /, **kwargs):
    return OPTIMIZERS[name](**kwargs)


def values(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def var(value, **kwargs):
    return keras.Variable(np.asarray(value, "float32"), **kwargs)


def tensor(value):
    """A float32 tensor (lists would become float64 under JAX's x64 mode, set in conftest)."""
    return ops.convert_to_tensor(np.asarray(value, "float32"))


P0 = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
G = np.ones((2, 2), "float32")


def stepped(name, grads_list, p0=P0, **kwargs):
    """The control: ``p0`` after applying each gradient of ``grads_list`` with a fresh optimizer."""
    opt, v = make(name, **kwargs), var(p0)
    for g in grads_list:
        opt.apply_gradients([(tensor(g), v)])
    return values(v)


# --- optimizer_test.py ----------------------------------------------------------------------


def test_iterations_counter(name):
    v, opt = var(P0), make(name, learning_rate=1.0)
    assert int(opt.iterations) == 0
    for step in (1, 2):
        opt.apply_gradients([(tensor(G), v)])
        assert int(opt.iterations) == step


def test_empty_gradients(name):
    opt = make(name, learning_rate=1.0)
    with pytest.raises(ValueError, match="No gradients provided for any variable"):
        opt.apply_gradients([(None, var(P0))])
    # A None gradient is dropped with a warning; the other variable steps as it would alone.
    v, v2, opt = var(P0), var(P0), make(name, learning_rate=1.0)
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        opt.apply_gradients([(None, v), (tensor(G), v2)])
    np.testing.assert_array_equal(values(v), P0)
    np.testing.assert_allclose(values(v2), stepped(name, [G], learning_rate=1.0), rtol=1e-6)


def test_clip_arguments(name):
    for arg in ("clipnorm", "clipvalue", "global_clipnorm"):
        assert getattr(make(name, learning_rate=1.0, **{arg: 0.1}), arg) == 0.1
    for pair in ({"clipnorm": 0.1, "clipvalue": 0.1}, {"clipnorm": 0.1, "global_clipnorm": 0.1}):
        with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and"):
            make(name, learning_rate=1.0, **pair)


def test_clip_gradients(name):
    # Derived: clipnorm=1 scales [100, 100] to unit norm; clipvalue=1 clips each entry to 1;
    # global_clipnorm=1 divides by the global norm.
    grad = ops.convert_to_tensor([100.0, 100.0])
    (clipped,) = make(name, clipnorm=1)._clip_gradients([grad])
    np.testing.assert_allclose(values(clipped), [2**-0.5] * 2, rtol=1e-6)
    (clipped,) = make(name, clipvalue=1)._clip_gradients([grad])
    np.testing.assert_allclose(values(clipped), [1.0, 1.0])
    grad = np.array([50.0, 100.0], "float32")
    (clipped,) = make(name, global_clipnorm=1)._clip_gradients([ops.convert_to_tensor(grad)])
    np.testing.assert_allclose(values(clipped), grad / np.linalg.norm(grad), rtol=1e-6)


@pytest.mark.parametrize("frequency", [None, 2, 3])
def test_ema(name, frequency):
    # Keras' EMA: the average starts at the weights after the first step, then
    # ema = mu ema + (1 - mu) w after each step; every `frequency` steps the weights are
    # overwritten with it. The weights before an overwrite are those of the optimizer without
    # EMA (the control), since nothing was overwritten before.
    mu, v = 0.9, var(P0)
    opt = make(
        name, learning_rate=1.0, use_ema=True, ema_momentum=mu, ema_overwrite_frequency=frequency
    )
    control = [stepped(name, [G] * k, learning_rate=1.0) for k in (1, 2, 3)]
    steps = frequency or 3
    for _ in range(steps):
        opt.apply_gradients([(tensor(G), v)])
    ema = control[0]
    for w in control[1:steps]:
        ema = mu * ema + (1 - mu) * w
    np.testing.assert_allclose(values(opt._model_variables_moving_average[0]), ema, rtol=1e-5)
    expected = ema if frequency else control[steps - 1]
    np.testing.assert_allclose(values(v), expected, rtol=1e-5)


def test_ema_finalized_at_the_end_of_fit(name, fresh_keras):
    model = keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(10, kernel_initializer="ones", use_bias=False)]
    )
    model.compile(optimizer=make(name, use_ema=True, ema_momentum=0.9), loss="mse")
    model.fit(np.ones((4, 5)), np.zeros((4, 10)), epochs=2, batch_size=2, verbose=0)
    ema = values(model.optimizer._model_variables_moving_average[0])
    np.testing.assert_array_equal(values(model.trainable_variables[0]), ema)
    assert not np.allclose(ema, 1.0)  # something was trained


def test_constraints_are_applied(name):
    v = keras.Variable(np.random.default_rng(0).random((2, 2)).astype("float32") - 1.0)
    v.constraint = keras.constraints.NonNeg()
    make(name, learning_rate=1e-4).apply_gradients([(ops.zeros((2, 2)), v)])
    assert values(v).min() == 0.0  # every entry was negative and is clipped to 0


def test_static_loss_scaling(name):
    # Identity: gradients scaled by the factor give the unscaled step.
    v, opt = var(P0), make(name, learning_rate=0.5, loss_scale_factor=1024.0)
    opt.apply_gradients([(ops.convert_to_tensor(np.multiply(P0, 1024.0)), v)])
    assert float(opt.scale_loss(1.0)) == 1024.0
    np.testing.assert_allclose(values(v), stepped(name, [P0], learning_rate=0.5), rtol=1e-6)


def test_set_weights(name):
    x = var(P0)
    first = make(name, momentum=0.5) if name in {"SGD", "SGDP"} else make(name)
    first.apply_gradients([(tensor(P0), x)])
    second = make(name, momentum=0.5) if name in {"SGD", "SGDP"} else make(name)
    with pytest.raises(ValueError, match="You are calling"):
        second.set_weights(first.variables)
    second.build([x])
    second.set_weights(first.variables)
    assert len(first.variables) == len(second.variables) > 2  # state, not just lr and count
    for a, b in zip(first.variables, second.variables, strict=True):
        np.testing.assert_array_equal(values(a), values(b))


def test_gradient_accumulation(name):
    # Keras applies the mean of the accumulated gradients every third call (the control: one
    # step with the mean gradient) and counts `iterations` in applied steps.
    v, opt = var(P0), make(name, learning_rate=1.0, gradient_accumulation_steps=3)
    assert opt.gradient_accumulation_steps == 3
    for call in range(1, 5):
        opt.apply_gradients([(tensor(G), v)])
        accumulated = 0 if call == 3 else call % 3
        np.testing.assert_array_equal(
            values(opt._accumulated_gradients[0]), np.full((2, 2), accumulated)
        )
        assert int(opt._iterations) == call
        assert int(opt.iterations) == call // 3
        expected = P0 if call < 3 else stepped(name, [G], learning_rate=1.0)
        np.testing.assert_allclose(values(v), expected, rtol=1e-6)


def test_gradient_accumulation_with_weight_decay(name):
    # The mean of three gradients applied once equals three accumulated calls.
    opt1 = make(name, weight_decay=0.05)
    opt3 = make(name, weight_decay=0.05, gradient_accumulation_steps=3)
    v1, v3 = var([[0.9], [0.5]]), var([[0.9], [0.5]])
    rng = np.random.default_rng(0)
    for _ in range(4):
        grads = rng.random((3, 2, 1)).astype("float32")
        opt1.apply_gradients([(ops.convert_to_tensor(grads.mean(axis=0)), v1)])
        for g in grads:
            opt3.apply_gradients([(ops.convert_to_tensor(g), v3)])
    np.testing.assert_allclose(values(v3), values(v1), rtol=1e-5)
    assert not np.allclose(values(v1), [[0.9], [0.5]])


def test_callable_learning_rate(name):
    v, opt = var(P0), make(name, learning_rate=lambda: 0.1)
    opt.apply_gradients([(tensor(G), v)])
    assert int(opt.iterations) == 1
    np.testing.assert_allclose(values(v), stepped(name, [G], learning_rate=0.1), rtol=1e-6)


def test_overwrite_with_gradient(name):
    v, v2 = var(P0), var(P0)
    v.overwrite_with_gradient = True
    make(name, learning_rate=1.0).apply_gradients([(tensor(G), v), (tensor(G), v2)])
    np.testing.assert_array_equal(values(v), G)  # the gradient itself, no step
    np.testing.assert_allclose(values(v2), stepped(name, [G], learning_rate=1.0), rtol=1e-6)


def test_overwrite_with_gradient_and_accumulation(name):
    # Keras' expectations: an overwritten variable takes the last gradient when the
    # accumulated step is applied; the others step with the mean gradient.
    v, v2 = var(P0), var(P0)
    v.overwrite_with_gradient = True
    opt = make(name, learning_rate=1.0, gradient_accumulation_steps=2)
    ones, twos = ops.ones((2, 2)), 2 * ops.ones((2, 2))
    opt.apply_gradients([(ones, v), (ones, v2)])
    np.testing.assert_array_equal(values(v), P0)
    np.testing.assert_array_equal(values(v2), P0)
    opt.apply_gradients([(twos, v), (twos, v2)])
    np.testing.assert_array_equal(values(v), np.full((2, 2), 2.0))
    mean = np.full((2, 2), 1.5)
    np.testing.assert_allclose(values(v2), stepped(name, [mean], learning_rate=1.0), rtol=1e-6)
    after_two = values(v2)
    opt.apply_gradients([(ones, v), (ones, v2)])
    np.testing.assert_array_equal(values(v), np.full((2, 2), 2.0))
    np.testing.assert_array_equal(values(v2), after_two)


def test_setting_a_schedule_untracks_the_learning_rate_variable(name):
    opt = make(name, learning_rate=0.001)
    assert len(opt.variables) == 2  # iterations and learning_rate, before build
    opt.learning_rate = keras.optimizers.schedules.PolynomialDecay(opt.learning_rate, 4)
    assert len(opt.variables) == 1


def test_pickle_round_trip(name):
    opt = make(name)
    assert pickle.loads(pickle.dumps(opt)).get_config() == opt.get_config()


def test_auto_naming_and_unique_paths(name, fresh_keras):
    # Keras names an unnamed optimizer after its class in snake case, made unique per session.
    base = {"AdamP": "adam_p", "SGDP": "sgdp", "AdamW": "adam_w", "SGD": "sgd"}[name]
    first, second = make(name), make(name)
    assert (first.name, second.name) == (base, f"{base}_1")
    assert make(name, name="mine").name == "mine"
    reloaded = keras.optimizers.deserialize(keras.optimizers.serialize(second))
    assert type(reloaded) is type(second) and reloaded.name == f"{base}_1"
    # Built on the same variables, no two state variables share a path, within one optimizer
    # (AdamP's and SGDP's projection counters too) or across the two.
    extra = {"momentum": 0.9} if name in {"SGD", "SGDP"} else {}
    extra.update({"track_projection": True} if name in OURS else {})
    variables = [var(P0, name="w"), var(P0, name="v"), var([1.0, 2.0], name="b")]
    paths = []
    for opt in (make(name, **extra), make(name, **extra)):
        opt.build(variables)
        paths += [v.path for v in opt.variables]
    assert len(set(paths)) == len(paths), sorted(paths)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.train.Checkpoint and tf.Variable")
def test_tf_checkpoint_restores_optimizer_state(name, tmp_path, fresh_keras):
    import tensorflow as tf

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    opt = make(name)
    x, y = np.random.default_rng(0).random((2, 1, 2))
    model.compile(opt, "mse")
    model.train_on_batch(x, y)
    reference = model.predict(x, verbose=0)
    saved = tf.train.Checkpoint(model, optimizer=opt).save(str(tmp_path / "ckpt"))
    model.train_on_batch(x, y)
    assert not np.allclose(model.predict(x, verbose=0), reference, atol=1e-3)
    tf.train.Checkpoint(model, optimizer=opt).restore(saved)
    np.testing.assert_allclose(model.predict(x, verbose=0), reference, atol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.Variable")
def test_mixed_with_tf_variables(name):
    import tensorflow as tf

    v, tf_v = var(P0), tf.Variable(P0)
    opt = make(name, learning_rate=1.0)
    opt.apply_gradients([(tensor(G), v), (tf.constant(G), tf_v)])
    assert int(opt.iterations) == 1
    with pytest.warns(UserWarning, match="Gradients do not exist for variables"):
        opt.apply_gradients([(tensor(G), v), (None, tf_v)])
    assert int(opt.iterations) == 2


# --- adam_test.py, generalised ------------------------------------------------------------


def test_config_round_trip(name):
    opt = make(name, learning_rate=0.5, clipnorm=2.0, weight_decay=0.01)
    config = opt.get_config()
    assert type(opt).from_config(config).get_config() == config
    revived = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(revived) is type(opt) and revived.get_config() == config


def test_single_step(name):
    # Derived: Adam's first step is lr g / (|g| + eps) (m and v bias-corrected to g and g^2),
    # SGD's is lr g. A vector is never projected (D4).
    grads = np.array([1.0, 6.0, 7.0, 2.0], "float32")
    v = var([1.0, 2.0, 3.0, 4.0])
    make(name, learning_rate=0.5).apply_gradients([(ops.convert_to_tensor(grads), v)])
    step = 0.5 * (np.sign(grads) if name in ADAM_TYPE else grads)
    np.testing.assert_allclose(values(v), [1.0, 2.0, 3.0, 4.0] - step, rtol=1e-4, atol=1e-4)


def test_weight_decay_and_exclusions(name):
    # Derived: a zero gradient leaves only the decay, p (1 - lr wd) per step (AdamP: r = 1 on a
    # scalar, D4; SGDP: momentum 0); var1 is stepped by all three optimizers.
    zero = ops.zeros(())
    var1, var2, var3 = var(2.0), var(2.0, name="exclude"), var(2.0)
    make(name, learning_rate=1.0, weight_decay=0.004).apply_gradients([(zero, var1)])
    opt2 = make(name, learning_rate=1.0, weight_decay=0.004)
    opt2.exclude_from_weight_decay(var_names=["exclude"])
    opt2.apply_gradients([(zero, var1), (zero, var2)])
    opt3 = make(name, learning_rate=1.0, weight_decay=0.004)
    opt3.exclude_from_weight_decay(var_list=[var3])
    opt3.apply_gradients([(zero, var1), (zero, var3)])
    np.testing.assert_allclose(values(var1), 2.0 * 0.996**3, rtol=1e-6)
    assert values(var2) == 2.0 and values(var3) == 2.0


def test_ema_finalize(name):
    mu = 0.9
    opt = make(name, learning_rate=1.0, use_ema=True, ema_momentum=mu)
    v, grads = var([1.0, 2.0]), tensor([0.1, 0.2])
    opt.apply_gradients([(grads, v)])
    v1 = values(v)
    np.testing.assert_allclose(values(opt._model_variables_moving_average[0]), v1)
    opt.apply_gradients([(grads, v)])
    expected = mu * v1 + (1 - mu) * values(v)
    opt.finalize_variable_values([v])
    np.testing.assert_allclose(values(v), expected, rtol=1e-6)


@pytest.mark.parametrize("clip", [{}, {"clipnorm": 100.0}], ids=["plain", "clipnorm"])
def test_embedding_model_fit(name, clip, fresh_keras):
    # Keras' test_clipnorm_indexed_slices and the issue's Embedding model; on TensorFlow the
    # embedding's gradient is a tf.IndexedSlices.
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(50, 8),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(make(name, learning_rate=1e-2, **clip), "mse")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 50, (64, 5)), rng.standard_normal((64, 1)).astype("float32")
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < history[0]


# --- loss_scale_optimizer_test.py ---------------------------------------------------------

# JAX's LossScaleOptimizer must be stateless; stateless_apply is not for TensorFlow.
MODES = {"tensorflow": ["stateful"], "jax": ["stateless"], "torch": ["stateful", "stateless"]}


def apply_loss_scaled(opt, grads, variables, mode):
    if mode == "stateful":
        opt.apply(grads, variables)
        return [values(v) for v in variables]
    if not opt.built:  # LossScaleOptimizer.build would make its scale variables again
        opt.build(variables)
    new_values, new_state = opt.stateless_apply(
        [v.value for v in opt.variables], grads, [v.value for v in variables]
    )
    for ref, value in zip(opt.variables, new_state, strict=True):
        ref.assign(value)
    return [values(v) for v in new_values]


@pytest.fixture(params=MODES[BACKEND])
def mode(request):
    return request.param


@pytest.mark.parametrize("inner_factor", [None, 100.0], ids=["plain", "inner-factor"])
def test_loss_scale_finite_step(name, mode, inner_factor):
    # Identity: the loss-scaled step of scaled gradients is the inner optimizer's plain step
    # (an inner loss_scale_factor is not applied twice).
    inner = make(name, learning_rate=0.5, loss_scale_factor=inner_factor)
    opt = keras.optimizers.LossScaleOptimizer(inner)
    g = np.array([1.0, 6.0, 7.0, 2.0], "float32")
    (new,) = apply_loss_scaled(
        opt, [ops.convert_to_tensor(g * opt.initial_scale)], [var([1.0, 2.0, 3.0, 4.0])], mode
    )
    control = stepped(name, [g], p0=[1.0, 2.0, 3.0, 4.0], learning_rate=0.5)
    np.testing.assert_allclose(new, control, rtol=1e-5)


def test_loss_scale_infinite_step_is_skipped(name, mode):
    opt = keras.optimizers.LossScaleOptimizer(make(name, learning_rate=0.5))
    grads = [ops.convert_to_tensor(np.full((2, 2), np.inf, "float32"))]
    (new,) = apply_loss_scaled(opt, grads, [var(P0)], mode)
    np.testing.assert_array_equal(new, P0)
    for v in opt.inner_optimizer.variables[2:]:  # the inner state stays zero
        assert not values(v).any(), v.path


def test_loss_scale_overwrite_with_gradient(name, mode):
    opt = keras.optimizers.LossScaleOptimizer(make(name, learning_rate=0.5))
    v = var([1.0, 2.0, 3.0, 4.0])
    v.overwrite_with_gradient = True
    (new,) = apply_loss_scaled(opt, [tensor([1.0, 6.0, 7.0, 2.0])], [v], mode)
    np.testing.assert_array_equal(new, [1.0, 6.0, 7.0, 2.0])


@pytest.mark.parametrize(
    ("initial", "grad", "expected"),
    # Derived from the dynamic rule: halve on a non-finite step (400 / 2^4 = 25); double after
    # every dynamic_growth_steps=2 finite steps (2 * 2^4 = 32 after 8 steps).
    [(400.0, np.inf, 25.0), (2.0, 1.0, 32.0)],
    ids=["down", "up"],
)
def test_loss_scale_dynamic_scale(name, mode, initial, grad, expected):
    opt = keras.optimizers.LossScaleOptimizer(
        make(name, learning_rate=0.5), initial_scale=initial, dynamic_growth_steps=2
    )
    v = var([1.0, 2.0, 3.0, 4.0])
    steps = 4 if grad == np.inf else 8
    for _ in range(steps):
        apply_loss_scaled(opt, [ops.convert_to_tensor(np.full(4, grad, "float32"))], [v], mode)
    assert float(opt.scale_loss(1.0)) == expected


def test_loss_scale_iterations(name, mode):
    opt = keras.optimizers.LossScaleOptimizer(make(name, learning_rate=0.5))
    v = var([1.0, 2.0, 3.0, 4.0])
    for i in range(3):
        apply_loss_scaled(opt, [tensor([1.0, 6.0, 7.0, 2.0])], [v], mode)
        assert int(opt.iterations) == i + 1


def test_loss_scale_apply_without_variables(name):
    if BACKEND == "jax":
        pytest.skip("JAX's LossScaleOptimizer must use stateless_apply")
    opt = keras.optimizers.LossScaleOptimizer(make(name, learning_rate=0.5))
    v = var([1.0, 2.0, 3.0, 4.0])
    opt.build([v])
    opt.apply([ops.convert_to_tensor(np.array([1.0, 6.0, 7.0, 2.0]) * opt.initial_scale)])
    control = stepped(name, [[1.0, 6.0, 7.0, 2.0]], p0=[1.0, 2.0, 3.0, 4.0], learning_rate=0.5)
    np.testing.assert_allclose(values(v), control, rtol=1e-5)


def test_loss_scale_config(name):
    opt = keras.optimizers.LossScaleOptimizer(
        make(name, learning_rate=0.5), initial_scale=3.0, dynamic_growth_steps=2, name="lso"
    )
    config = opt.get_config()
    assert (config["name"], config["initial_scale"], config["dynamic_growth_steps"]) == (
        "lso",
        3.0,
        2,
    )
    revived = keras.optimizers.LossScaleOptimizer.from_config(config)
    assert type(revived.inner_optimizer) is type(opt.inner_optimizer)
    assert revived.inner_optimizer.get_config() == opt.inner_optimizer.get_config()


# --- trainer_test.py and saving_lib_test.py -------------------------------------------------


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_compile_adds_a_loss_scale_optimizer(name, policy, fresh_keras):
    keras.config.set_dtype_policy(policy)
    for auto_scale_loss in (True, False):
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.compile(make(name), loss="mse", auto_scale_loss=auto_scale_loss)
        model.fit(np.ones((8, 1)), np.zeros((8, 1)), batch_size=4, verbose=0)
        wrapped = policy == "mixed_float16" and auto_scale_loss
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == wrapped
        inner = model.optimizer.inner_optimizer if wrapped else model.optimizer
        assert isinstance(inner, type(make(name)))


@pytest.mark.skipif(BACKEND == "torch", reason="Keras: half precision unsupported on torch CPU")
def test_loss_scaling_prevents_underflow(name, fresh_keras):
    # Keras' test: 15 sigmoid Dense(1) layers in mixed_float16; without loss scaling the first
    # kernel's float16 gradient underflows to 0 and the kernel stays at 1; with it, the kernel
    # moves. By design AdamP and SGDP do not move it either: the (1, 1) kernel's gradient is
    # below eps after unscaling, so its cosine |g p| / (max(|g|, eps) |p|) is below delta and
    # the projection removes the whole (one-element) update, as in the official package.
    keras.config.set_dtype_policy("mixed_float16")  # compile adds loss scaling for the model

    def deep_model():
        return keras.Sequential(
            [keras.Input((1,))]
            + [
                keras.layers.Dense(
                    1,
                    use_bias=False,
                    kernel_initializer="ones",
                    activation="sigmoid",
                    dtype="mixed_float16",
                )
                for _ in range(15)
            ]
        )

    for auto_scale_loss in (False, True):
        model = deep_model()
        model.compile(make(name, learning_rate=1e9), "mse", auto_scale_loss=auto_scale_loss)
        model.fit(np.ones((1, 1)), np.ones((1, 1)), batch_size=1, verbose=0)
        moved = values(model.layers[0].kernel) != 1.0
        assert moved == (auto_scale_loss and name not in OURS)


@pytest.mark.parametrize(
    ("run_eagerly", "jit_compile"),
    [(True, False), (False, False), (False, True)],
    ids=["eager", "graph", "jit"],
)
def test_fit_flows(name, run_eagerly, jit_compile, fresh_keras):
    if BACKEND == "torch" and jit_compile:
        pytest.skip("torch.compile is slow on CPU; test_training.py covers it with --runslow")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(3)])
    model.compile(
        make(name, learning_rate=1e-2), "mse", run_eagerly=run_eagerly, jit_compile=jit_compile
    )
    x, y = np.random.default_rng(0).standard_normal((2, 64, 4)).astype("float32")
    history = model.fit(x, y[:, :3], batch_size=16, epochs=3, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < history[0]
    assert int(model.optimizer.iterations) == 12


@pytest.mark.skipif(BACKEND == "torch", reason="Keras' torch backend has no sparse inputs")
def test_fit_on_sparse_inputs(name, fresh_keras):
    scipy_sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(0)
    x = scipy_sparse.random(64, 10, density=0.3, format="csr", random_state=0, dtype="float32")
    y = rng.standard_normal((64, 2)).astype("float32")
    model = keras.Sequential([keras.Input((10,), sparse=True), keras.layers.Dense(2)])
    model.compile(make(name, learning_rate=1e-2), "mse")
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0).history["loss"]
    assert np.isfinite(history).all() and history[-1] < history[0]


def test_save_and_load_keeps_the_optimizer(name, tmp_path, fresh_keras):
    # saving_lib_test's _test_compile_preserved: class, config and state survive .keras.
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(make(name, learning_rate=1e-2), "mse")
    x, y = np.random.default_rng(0).random((2, 8, 4)).astype("float32")
    model.fit(x, y[:, :1], verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        np.testing.assert_array_equal(values(a), values(b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
