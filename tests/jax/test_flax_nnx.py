"""Flax's own optimizer checks (``tests/nnx/optimizer_test.py``) and state serialization, ported
in our own words and run over adamp_jax with optax.adamw / optax.sgd as controls.

``nnx.Optimizer`` calls ``init`` eagerly and keeps the state as nnx variables; it reads each
moment's sharding annotation from the param's, and saves through ``flax.serialization``.
"""

from __future__ import annotations

import adamp_jax
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

OPTIMIZERS = {
    "adamp": lambda lr: adamp_jax.adamp(lr, weight_decay=1e-2),
    "sgdp": lambda lr: adamp_jax.sgdp(lr, momentum=0.9, weight_decay=1e-2),
    "optax.adamw": lambda lr: optax.adamw(lr),
    "optax.sgd": lambda lr: optax.sgd(lr, momentum=0.9),
}
MOMENT = {"adamp": "mu", "sgdp": "trace", "optax.adamw": "mu", "optax.sgd": "trace"}
names = pytest.mark.parametrize("name", list(OPTIMIZERS))


class Model(nnx.Module):
    def __init__(self, din: int, dout: int, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(din, 3, rngs=rngs)
        self.linear2 = nnx.Linear(3, dout, rngs=rngs)

    def __call__(self, x):
        return self.linear2(self.linear1(x))


def mse(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


@names
@pytest.mark.parametrize("module", [nnx.Linear, Model])
def test_split_merge_keeps_the_model(name, module):
    x = jax.random.normal(jax.random.key(0), (1, 2))
    model = module(2, 4, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, OPTIMIZERS[name](1e-3), wrt=nnx.Param)
    out = model(x)
    graphdef, state = nnx.split(optimizer)
    nnx.merge(graphdef, state)
    np.testing.assert_allclose(out, model(x))


@names
@pytest.mark.parametrize("module", [nnx.Linear, Model])
@pytest.mark.parametrize("mode", ["eager", "nnx.jit", "jax.jit"])
def test_one_step_lowers_the_loss(name, module, mode):
    """Flax's ``test_jit``: one update in eager mode, under ``nnx.jit``, and under ``jax.jit``
    through ``split`` / ``merge``, lowers a quadratic loss."""
    x, y = jax.random.normal(jax.random.key(0), (1, 2)), jnp.ones((1, 4))
    model = module(2, 4, rngs=nnx.Rngs(0))
    state = nnx.ModelAndOptimizer(model, OPTIMIZERS[name](1e-3))
    before = mse(model, x, y)

    def train_step(state, x, y):
        state.update(nnx.grad(mse)(state.model, x, y))

    if mode == "jax.jit":

        @jax.jit
        def pure_step(graphdef, pure, x, y):
            st = nnx.merge(graphdef, pure)
            train_step(st, x, y)
            return nnx.split(st)

        state = nnx.merge(*pure_step(*nnx.split(state), x, y))
    else:
        (nnx.jit(train_step) if mode == "nnx.jit" else train_step)(state, x, y)
    assert mse(state.model, x, y) < before


@names
def test_update_returns_updates_shaped_like_params(name):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, OPTIMIZERS[name](0.1), wrt=nnx.Param)
    grads = nnx.grad(lambda m: sum(jnp.sum(p**2) for p in jax.tree.leaves(nnx.state(m))))(model)
    updates = optimizer.update(model, grads)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    shapes = jax.tree.map(lambda u: u.shape, nnx.to_pure_dict(updates))
    assert shapes == jax.tree.map(lambda p: p.shape, params)


@names
@pytest.mark.parametrize("wrt", [nnx.Param, nnx.LoRAParam, (nnx.Param, nnx.LoRAParam)])
def test_only_the_wrt_variables_change(name, wrt):
    """Flax's ``test_wrt_update``: a LoRA model, the optimizer built for some variable types;
    those change, the others stay bit for bit."""
    model = nnx.LoRA(4, 2, 10, base_module=Model(4, 10, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(model, OPTIMIZERS[name](1e-2), wrt=wrt)
    before, before_other = nnx.clone(nnx.state(model, wrt, ...))
    x, y = jnp.ones((1, 4)), jnp.ones((1, 10))
    grad_fn = nnx.grad(mse, argnums=nnx.DiffState(0, wrt))
    for _ in range(2):  # lora_b starts at zero: lora_a's gradient is zero on the first step
        loss = mse(model, x, y)
        optimizer.update(model, grad_fn(model, x, y))
        assert mse(model, x, y) < loss
    after, after_other = nnx.state(model, wrt, ...)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        assert np.any(np.asarray(a) != np.asarray(b))
    for a, b in zip(jax.tree.leaves(before_other), jax.tree.leaves(after_other), strict=True):
        np.testing.assert_array_equal(a, b)


@names
def test_moments_carry_the_params_sharding_annotation(name):
    """Flax's ``test_sharding_propagation``: on a mesh, each moment is laid out and annotated
    like its param."""
    mesh = jax.make_mesh((1, 1), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with jax.set_mesh(mesh):
        init = nnx.with_partitioning(nnx.initializers.lecun_normal(), sharding=("a", "b"))
        model = nnx.Linear(2, 3, rngs=nnx.Rngs(0), kernel_init=init, use_bias=False)
        optimizer = nnx.Optimizer(model, OPTIMIZERS[name](0.1), wrt=nnx.Param)
    state = nnx.state(optimizer)
    moment = state["opt_state"][0][MOMENT[name]]["kernel"]
    assert moment.out_sharding == ("a", "b")
    spec = nnx.get_partition_spec(state)["opt_state"][0][MOMENT[name]]["kernel"]
    assert spec.get_value() == jax.sharding.PartitionSpec("a", "b")


@names
def test_state_round_trips_through_flax_serialization(name):
    """A linen-style checkpoint: ``flax.serialization.to_bytes`` of the optax state after a few
    steps, restored into a fresh ``init``'s structure, continues exactly like the original."""
    params = {"dense": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "bias": jnp.ones(3)}}
    grads = jax.tree.map(jnp.cos, params)
    opt = OPTIMIZERS[name](0.1)
    state = opt.init(params)
    for _ in range(3):
        _, state = opt.update(grads, state, params)
    restored = flax.serialization.from_bytes(opt.init(params), flax.serialization.to_bytes(state))
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    u1, s1 = opt.update(grads, state, params)
    u2, s2 = opt.update(grads, restored, params)
    for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2)), strict=True):
        np.testing.assert_array_equal(a, b)
    names_in_dict = flax.serialization.to_state_dict(state)["0"]
    assert set(names_in_dict) == ({"count", "mu", "nu"} if "adam" in name else {"trace"})
