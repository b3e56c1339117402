"""The generic checks optax runs over its own optimizers, run over adamp_jax and optax's controls.

Ported in our own words from optax's ``_src/alias_test.py``, ``contrib/_common_test.py``, the
wrapper tests (``apply_if_finite``, ``conditionally_mask``, ``masked``, ``MultiSteps``) and
``tree_utils/_state_utils_test.py``. Each test is parametrised over ``adamp_jax.adamp``,
``adamp_jax.sgdp`` and the controls ``optax.adamw`` / ``optax.sgd(momentum=0.9)``: a failure the
controls share is the test's own. Where adamp_jax differs from optax on purpose (float32 state
for 16-bit params, complex params refused), the test says so and checks the documented rule.
"""

from __future__ import annotations

import inspect
import warnings

import adamp_jax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

# name -> (factory, kwargs): the learning rates optax's own tests give adamw and sgd.
OPTIMIZERS = {
    "adamp": (adamp_jax.adamp, {"learning_rate": 1e-1}),
    "sgdp": (adamp_jax.sgdp, {"learning_rate": 1e-3, "momentum": 0.9}),
    "optax.adamw": (optax.adamw, {"learning_rate": 1e-1}),
    "optax.sgd": (optax.sgd, {"learning_rate": 1e-3, "momentum": 0.9}),
}
OURS = ("adamp", "sgdp")
# The field holding the first moment / momentum buffer, named as optax names it.
MOMENT = {"adamp": "mu", "sgdp": "trace", "optax.adamw": "mu", "optax.sgd": "trace"}
DTYPE_ARG = {"adamp": "mu_dtype", "sgdp": "accumulator_dtype"}
DTYPE_ARG |= {"optax.adamw": "mu_dtype", "optax.sgd": "accumulator_dtype"}

names = pytest.mark.parametrize("name", list(OPTIMIZERS))


def make(name: str, **override):
    factory, kwargs = OPTIMIZERS[name]
    return factory(**{**kwargs, **override})


# Targets: (initial params, minimiser, objective). The 1-D ones never reach the projection
# (D4), so adamp/sgdp must do what AdamW/SGD do; the matrix ones go through it.


def parabola(dtype):
    p0, target = jnp.array([-1.0, 10.0, 1.0], dtype), jnp.array([1.0, -1.0, 1.0], dtype)
    return p0, target, lambda p: jnp.sum(jnp.square(p - target))


def rosenbrock(dtype):
    p0, target = jnp.array([0.0, 0.0], dtype), jnp.array([1.0, 1.0], dtype)
    return p0, target, lambda p: jnp.square(1.0 - p[0]) + 100.0 * jnp.square(p[1] - p[0] ** 2)


def matrix_parabola(dtype):
    p0, target = jnp.zeros((2, 2), dtype), jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype)
    return p0, target, lambda p: jnp.sum(jnp.square(p - target))


def mixed(dtype):
    p0 = (jnp.zeros(3, dtype), jnp.zeros((2, 2), dtype))
    target = (jnp.array([1.0, -1.0, 2.0], dtype), jnp.array([[1.0, 0.0], [-1.0, 1.0]], dtype))
    return (
        p0,
        target,
        lambda p: sum(jnp.sum(jnp.square(a - b)) for a, b in zip(p, target, strict=True)),
    )


def make_step(opt, objective):
    def step(params, state):
        grads = jax.grad(objective)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


@names
@pytest.mark.parametrize("target", [parabola, rosenbrock, matrix_parabola, mixed])
def test_optimization_converges(name, target):
    """alias_test / _common_test ``test_optimization``: 10,000 scanned steps reach the
    minimiser within 3e-2, and a no-op ``optax.tree.map_params`` leaves the state usable."""
    if name in ("sgdp", "optax.sgd") and target is rosenbrock:
        steps = 30_000  # lr 1e-3 on the Rosenbrock valley: optax's contrib tests run 30,000
    else:
        steps = 10_000
    opt = make(name)
    params, want, objective = target(jnp.float32)
    state = optax.tree.map_params(opt, lambda v: v, opt.init(params))
    step = make_step(opt, objective)
    (params, _), _ = jax.lax.scan(lambda c, _: (step(*c), None), (params, state), length=steps)
    for got, w in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, w, rtol=3e-2, atol=3e-2)


@names
def test_second_update_does_not_recompile(name):
    opt = make(name)
    params, _, objective = matrix_parabola(jnp.float32)
    step = jax.jit(make_step(opt, objective))
    state = opt.init(params)
    params, state = step(params, state)
    step(params, state)
    assert step._cache_size() == 1


@names
def test_update_accepts_extra_args(name):
    """optax passes extra keyword arguments down a chain; an optimizer must ignore unknown ones."""
    opt = make(name)
    params, _, objective = matrix_parabola(jnp.float32)

    @jax.jit
    def step(params, state):
        updates, state = opt.update(jax.grad(objective)(params), state, params, unknown_arg=1)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    for _ in range(2):
        params, state = step(params, state)
    assert np.all(np.isfinite(params))


@names
def test_inject_hyperparams_gives_the_same_updates_and_state(name):
    factory, kwargs = OPTIMIZERS[name]
    opt, injected = factory(**kwargs), optax.inject_hyperparams(factory)(**kwargs)
    params = [-jnp.ones((2, 3)), jnp.ones((2, 5, 2))]
    grads = [jnp.ones((2, 3)), -jnp.ones((2, 5, 2))]
    u, s = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
    ui, si = jax.jit(injected.update)(grads, jax.jit(injected.init)(params), params)
    # rtol as optax's: injected hyperparameters are float32 arrays, constants fold otherwise
    for a, b in zip(jax.tree.leaves((ui, si.inner_state)), jax.tree.leaves((u, s)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@names
def test_inject_hyperparams_compiles_a_program_the_size_of_the_plain_one(name):
    """The injected step is the plain step with hyperparameters read from the state: a few
    more operations, not a branch per leaf (an injected ``channel_axis`` made every leaf of
    ndim >= 2 a ``lax.switch``: 3x the lines). Measured here: adamp 323 vs 335 lines, sgdp
    248 vs 216, adamw 124 vs 130, sgd 35 vs 29."""
    factory, kwargs = OPTIMIZERS[name]
    params = {"conv": jnp.ones((3, 3, 4, 8)), "dense": jnp.ones((8, 2)), "b": jnp.ones(2)}

    def lines(opt):
        step = make_step(opt, lambda p: sum(jnp.sum(x * x) for x in jax.tree.leaves(p)))
        return len(jax.jit(step).lower(params, opt.init(params)).as_text().splitlines())

    plain, injected = lines(factory(**kwargs)), lines(optax.inject_hyperparams(factory)(**kwargs))
    assert injected <= 1.25 * plain, (injected, plain)


@pytest.mark.parametrize("name", OURS)
def test_injected_channel_axis_works_and_static_args_keep_it_static(name):
    """docs/jax.md: an int ``channel_axis`` given to ``inject_hyperparams`` becomes a
    hyperparameter (one ``lax.switch`` over the axes per leaf, same results); naming it in
    ``static_args`` keeps the plain program."""
    factory, kwargs = OPTIMIZERS[name]
    params = {"w": jnp.arange(24.0).reshape(4, 6) / 24, "b": jnp.ones(6)}
    grads = jax.tree.map(lambda p: jnp.cos(p), params)
    want, _ = factory(**kwargs, channel_axis=0).update(
        grads, factory(**kwargs).init(params), params
    )
    for static_args in ((), ("channel_axis",)):
        opt = optax.inject_hyperparams(factory, static_args=static_args)(**kwargs, channel_axis=0)
        got, _ = jax.jit(opt.update)(grads, opt.init(params), params)
        for k in params:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5)


@names
def test_learning_rate_annotation_accepts_a_schedule(name):
    """_common_test: a factory annotated ``optax.ScalarOrSchedule`` (a real annotation, not a
    string) takes a schedule, and a constant schedule equals the constant."""
    factory, kwargs = OPTIMIZERS[name]
    annotation = inspect.signature(factory).parameters["learning_rate"].annotation
    assert annotation in (optax.ScalarOrSchedule, optax.Schedule)
    params, _, objective = matrix_parabola(jnp.float32)
    a, b = (
        factory(**kwargs),
        factory(**{**kwargs, "learning_rate": optax.constant_schedule(kwargs["learning_rate"])}),
    )
    pa, sa, pb, sb = params, a.init(params), params, b.init(params)
    for _ in range(5):
        pa, sa = make_step(a, objective)(pa, sa)
        pb, sb = make_step(b, objective)(pb, sb)
    np.testing.assert_allclose(pa, pb, rtol=1e-6)


# ------------------------------------------------------------------------------- dtypes


@names
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_updates_keep_the_params_dtype(name, dtype):
    """alias_test ``test_preserve_dtype``: updates come back in the params' dtype."""
    opt = make(name)
    params = {"v": jnp.array([1.0, 2.0], dtype), "w": jnp.ones((2, 3), dtype)}
    grads = jax.grad(lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p)))(params)
    updates, _ = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
    assert jax.tree.map(lambda u: u.dtype, updates) == {"v": dtype, "w": dtype}


@names
@pytest.mark.parametrize("params_dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("state_dtype", ["bfloat16", "float32", None])
def test_explicit_moment_dtype(name, params_dtype, state_dtype):
    """alias_test ``test_explicit_dtype``: ``mu_dtype`` / ``accumulator_dtype`` set the first
    moment's dtype. With None optax follows the params; adamp_jax keeps float32 (D9)."""
    opt = make(name, **{DTYPE_ARG[name]: state_dtype})
    state = opt.init(jnp.zeros((2, 2), params_dtype))
    if state_dtype is not None:
        want = jnp.dtype(state_dtype)
    else:
        want = jnp.dtype("float32") if name in OURS else jnp.dtype(params_dtype)
    assert optax.tree.get(state, MOMENT[name]).dtype == want
    if name == "adamp":  # the second moment stays in the compute dtype whatever mu_dtype is
        assert optax.tree.get(state, "nu").dtype == jnp.float32


@pytest.mark.parametrize("name", OURS)
@pytest.mark.parametrize("state_dtype", ["bfloat16", "float16"])
def test_a_16_bit_first_moment_follows_the_float32_one(name, state_dtype):
    """A 16-bit first moment only rounds the stored moment: the trajectory stays within the
    rounding of its values (2**-8 relative per step for bfloat16) of the float32 one."""
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
    objective = lambda p: jnp.sum(jnp.sin(3 * p["w"])) + jnp.sum(p["b"] ** 2)  # noqa: E731
    runs = []
    for dt in (None, state_dtype):
        opt = make(name, **{DTYPE_ARG[name]: dt})
        p, s, step = params, opt.init(params), jax.jit(make_step(opt, objective))
        for _ in range(5):
            p, s = step(p, s)
        runs.append(p)
        assert optax.tree.get(s, MOMENT[name])["w"].dtype == (dt or jnp.float32)
    for k in params:
        np.testing.assert_allclose(runs[1][k], runs[0][k], rtol=0, atol=5 * 2**-8 * 0.1)


@names
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_state_types_are_stable_under_cond(name, dtype):
    """alias_test ``test_state_shape_dtype_shard_stability``: ``lax.cond`` between an update
    and ``(params, state)`` needs equal types: updates like params, new state like old."""
    with jax.enable_x64(dtype == "float64"):
        opt = make(name)
        params, _, objective = matrix_parabola(jnp.dtype(dtype))

        @jax.jit
        def step(params, state):
            grads = jax.grad(objective)(params)
            take = jax.random.randint(jax.random.key(0), (), 0, 2) == 0
            updates, state = jax.lax.cond(
                take, lambda: opt.update(grads, state, params), lambda: (params, state)
            )
            return optax.apply_updates(params, updates), state

        state = opt.init(params)
        for _ in range(2):
            params, new_state = step(params, state)
            assert params.dtype == jnp.dtype(dtype)
            state = jax.lax.cond(True, lambda: state, lambda: new_state)  # noqa: B023


@names
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_gradient_accumulation_with_multisteps(name, dtype):
    """alias_test ``test_gradient_accumulation``: inside ``optax.MultiSteps`` the first of 4
    micro-steps returns zeros of the gradients' dtype (a cond between the two)."""
    opt = optax.MultiSteps(make(name), every_k_schedule=4)
    params = {"v": jnp.array([1.0, 2.0], dtype), "w": jnp.ones((2, 2), dtype)}
    grads = jax.grad(lambda p: sum(jnp.sum(x**2) for x in jax.tree.leaves(p)))(params)
    updates, _ = jax.jit(opt.update)(grads, jax.jit(opt.init)(params), params)
    for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
        assert u.dtype == g.dtype
        np.testing.assert_array_equal(u, jnp.zeros_like(g))


# ------------------------------------------------------------------------------ wrappers


@names
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_apply_if_finite_and_conditionally_mask(name, dtype):
    """Both wrap the update in a ``lax.cond`` with a pass-through branch: equal output types.
    A NaN gradient is skipped by ``apply_if_finite`` (zero update, state unchanged)."""
    params = {"w": jnp.ones((3, 4), dtype), "b": jnp.ones(4, dtype)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    for opt in (
        optax.apply_if_finite(make(name), 5),
        optax.conditionally_mask(make(name), lambda step, **_: step % 2 == 0),
    ):
        state = opt.init(params)
        updates, state = jax.jit(opt.update)(grads, state, params)
        assert jax.tree.map(lambda u: u.dtype, updates) == {"w": dtype, "b": dtype}
    opt = optax.apply_if_finite(make(name), 5)
    state = opt.init(params)
    bad = {"w": grads["w"].at[0, 0].set(jnp.nan), "b": grads["b"]}
    updates, new_state = jax.jit(opt.update)(bad, state, params)
    assert int(new_state.notfinite_count) == 1
    for u in jax.tree.leaves(updates):
        np.testing.assert_array_equal(u, jnp.zeros_like(u))


@names
def test_masked_and_multi_transform(name):
    """Inside ``optax.masked`` the masked-out leaves reach ``init`` as ``MaskedNode``s and are
    passed through; ``multi_transform`` gives each label its own state."""
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    masked = optax.masked(make(name), {"w": True, "b": False})
    updates, _ = masked.update(grads, masked.init(params), params)
    np.testing.assert_array_equal(updates["b"], grads["b"])  # passed through untouched
    plain, _ = make(name).update(grads, make(name).init(params), params)
    np.testing.assert_array_equal(updates["w"], plain["w"])
    multi = optax.multi_transform({"a": make(name), "z": optax.set_to_zero()}, {"w": "a", "b": "z"})
    updates, _ = multi.update(grads, multi.init(params), params)
    np.testing.assert_array_equal(updates["w"], plain["w"])
    np.testing.assert_array_equal(updates["b"], jnp.zeros(4))


# --------------------------------------------------------------------------- tree utils


@names
def test_map_params_maps_every_params_shaped_tree(name):
    """_state_utils_test ``test_adam``: ``map_params`` replaces each tree shaped like the params
    (the moments) and hands the rest (the step counter) to ``transform_non_params``."""
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    specs = {"dense": {"kernel": "spec-k", "bias": "spec-b"}}
    opt = make(name)
    mapped = optax.tree.map_params(
        opt, lambda _, spec: spec, opt.init(params), specs, transform_non_params=lambda _: None
    )
    moment_trees = optax.tree.get_all_with_path(mapped, MOMENT[name])
    assert moment_trees and all(tree == specs for _, tree in moment_trees)
    if "adam" in name:
        assert optax.tree.get(mapped, "nu") == specs
        assert optax.tree.get(mapped, "count") is None


@pytest.mark.parametrize("name", OURS)
def test_map_params_with_pytree_mask_and_channel_axis(name):
    """``map_params`` calls ``init`` on a placeholder; a pytree ``mask`` or ``channel_axis``
    must not be checked against it (optax.adamw's pytree mask is the control below)."""
    params = {"w": jnp.ones((3, 4)), "b": jnp.ones(4)}
    for opt in (
        make(name, mask={"w": True, "b": False}, weight_decay=0.1),
        make(name, channel_axis={"w": 0, "b": 0}),
        optax.adamw(0.1, mask={"w": True, "b": False}),
    ):
        state = opt.init(params)
        mapped = optax.tree.map_params(opt, lambda v: v + 1, state)
        for tree in optax.tree.get_all_with_path(mapped, "mu" if name == "adamp" else "trace"):
            assert jax.tree.map(float, tree[1]["b"][0]) == 1.0


@names
def test_tree_get_and_set_of_count(name):
    """``optax.tree.get(state, "count")`` reads the step counter; ``tree.set`` writes it."""
    if name in ("sgdp", "optax.sgd"):
        pytest.skip("SGD keeps no step counter (optax.sgd neither)")
    opt = make(name)
    params = {"w": jnp.ones((2, 3))}
    state = opt.init(params)
    _, state = opt.update(params, state, params)
    assert int(optax.tree.get(state, "count")) == 1
    state = optax.tree.set(state, count=jnp.asarray(10, jnp.int32))
    assert int(optax.tree.get(state, "count")) == 10
    _, state = opt.update(params, state, params)
    assert int(optax.tree.get(state, "count")) == 11


@names
def test_abstract_init(name):
    """sharding_test ``test_init_with_abstract_input`` and ``jax.eval_shape``: ``init`` on
    ``ShapeDtypeStruct``s gives the state's shapes without computing anything."""
    opt = make(name)
    abstract = {
        "w": jax.ShapeDtypeStruct((2, 4, 8), jnp.float32),
        "b": jax.ShapeDtypeStruct((8,), jnp.float32),
    }
    assert opt.init(abstract) is not None
    shapes = jax.eval_shape(opt.init, abstract)
    concrete = opt.init(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), shapes) == jax.tree.map(
        lambda x: (x.shape, x.dtype), concrete
    )


# ------------------------------------------------------------------------------- leaves


@names
def test_python_float_and_float64_numpy_leaves(name):
    """A Python float leaf and float64 NumPy params with x64 off: float32, no warning."""
    opt = make(name)
    params = {"temperature": 1.0, "w": np.ones((2, 3))}
    grads = {"temperature": 0.5, "w": np.full((2, 3), 0.5)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = opt.init(params)
        updates, state = opt.update(grads, state, params)
        new = optax.apply_updates(params, updates)
    assert jax.tree.map(lambda x: x.dtype, updates) == {
        "temperature": jnp.float32,
        "w": jnp.float32,
    }
    assert float(new["temperature"]) < 1.0


@names
def test_integer_leaves_as_optax(name):
    """optax computes an integer leaf's update in float; ``apply_updates`` rounds it back into
    the integer dtype. adamp_jax does the same (1-D: never projected, so the first update
    equals the control's); its state stays float32, where optax's integer state changes type."""
    control = {"adamp": "optax.adamw", "sgdp": "optax.sgd"}.get(name, name)
    params = {"i": jnp.array([3, -2, 7], jnp.int32)}
    grads = {"i": jnp.array([1, -1, 2], jnp.int32)}
    kw = {"weight_decay": 0.0} if "adam" in name else {}
    got, _ = make(name, **kw).update(grads, make(name, **kw).init(params), params)
    want, _ = make(control, **kw).update(grads, make(control, **kw).init(params), params)
    # rtol: optax's float32 ``1 - 0.999**t`` is 6.6e-6 off (relative); adamp_jax's
    # bias correction is -expm1(t log b2) with log b2 in float64
    np.testing.assert_allclose(got["i"], want["i"], rtol=1e-5)
    assert optax.apply_updates(params, got)["i"].dtype == jnp.int32


@names
def test_complex_leaves(name):
    """optax's optimizers take complex params (Wirtinger gradients). AdamP's projection is
    defined for real weights, so adamp_jax refuses them at ``init``, naming the leaf; it
    never steps the real part alone."""
    params = {"layer": {"w": jnp.ones((2, 2), jnp.complex64)}}
    opt = make(name)
    if name in OURS:
        with pytest.raises(ValueError, match=r"\['layer'\]\['w'\] has dtype complex64"):
            opt.init(params)
    else:
        updates, _ = opt.update(jax.tree.map(lambda p: 1j * p, params), opt.init(params), params)
        assert np.any(np.imag(updates["layer"]["w"]) != 0)


@names
def test_negative_learning_rate_steps_up_the_gradient(name):
    """optax takes any learning rate; a negative one flips the update exactly."""
    params = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.ones(4)}
    grads = jax.tree.map(jnp.cos, params)
    lr = OPTIMIZERS[name][1]["learning_rate"]
    up, _ = make(name).update(grads, make(name).init(params), params)
    down, _ = make(name, learning_rate=-lr).update(grads, make(name).init(params), params)
    for k in params:
        np.testing.assert_array_equal(down[k], -up[k])
