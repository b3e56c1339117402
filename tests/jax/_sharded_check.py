"""Run by test_sharding.py in a fresh process: XLA_FLAGS must give two CPU devices before jax
is imported. Sharded and unsharded AdamP / SGDP steps must agree, and keep the shardings. The
state follows the params' sharding as optax's own optimizers' does (optax's sharding_test, Flax's
optimizer sharding test), with optax.adamw / optax.sgd as controls: eager ``init`` on a mesh,
``init`` and ``update`` of one type on an Explicit mesh, jitted or not, and a scanned loop."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()

import adamp_jax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from adamp_core.testing import branch_gradient

# On a loaded 2-core machine the in-process all-reduce of XLA's CPU client sometimes waits
# forever ("Expected 2 threads to join the rendezvous", then abort after 40 s): 2 of 8 runs with
# both cores busy. With one program in flight at a time (no asynchronous dispatch, each step
# awaited), 1 of 22 such runs; test_sharding.py retries that one failure.
jax.config.update("jax_cpu_enable_async_dispatch", False)

# Sums over a sharded axis are split across devices, so they round in another order: a few
# float32 ulps, measured below 1e-6 relative.
RTOL = 1e-5


def check(opt, mesh, specs, params, grads) -> None:
    @jax.jit
    def step(params, state, g):
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    def run(put):
        p = put(params)
        state = opt.init(p)
        views = []
        for g in grads:
            views.append(jax.tree.map(int, adamp_jax.decide(p, put(g))))
            p, state = jax.block_until_ready(step(p, state, put(g)))
        return p, views

    def shard(tree):
        return {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in tree.items()}

    want, want_views = run(lambda t: jax.tree.map(jax.numpy.asarray, t))
    got, got_views = run(shard)
    assert got_views == want_views, (got_views, want_views)
    assert [v["conv"] for v in want_views] == [1, 2, 0], want_views  # every branch reached
    for k in params:
        assert got[k].sharding.is_equivalent_to(NamedSharding(mesh, specs[k]), got[k].ndim)
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=RTOL)


OPTIMIZERS = {
    "adamp": lambda: adamp_jax.adamp(1e-2, weight_decay=0.1),
    "sgdp": lambda: adamp_jax.sgdp(0.1, momentum=0.9, weight_decay=0.1),
    "optax.adamw": lambda: optax.adamw(1e-2),
    "optax.sgd": lambda: optax.sgd(0.1, momentum=0.9),
}


def check_eager_init_follows_params(mesh, specs, params) -> None:
    """``TrainState.create`` and ``nnx.Optimizer`` call ``init`` eagerly: every moment must be
    laid out like its param, not gathered on one device."""
    sharded = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in params.items()}
    for name, make in OPTIMIZERS.items():
        state = make().init(sharded)
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
            key = next((k.key for k in path if isinstance(k, jax.tree_util.DictKey)), None)
            if key is None:  # the step counter: a replicated scalar
                continue
            want = NamedSharding(mesh, specs[key])
            assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (name, path, leaf.sharding)


def check_explicit_mesh() -> None:
    """On an Explicit mesh the sharding is part of the type: ``init`` (eager or jitted) and
    ``update`` must return one type, or ``lax.scan`` / ``lax.cond`` over the state fail."""
    mesh = jax.make_mesh((2,), ("x",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        params = {
            "w": jnp.ones((2, 8, 4), jnp.float16, out_sharding=NamedSharding(mesh, P(None, "x"))),
            "k": jnp.ones((4, 8), jnp.float32, out_sharding=NamedSharding(mesh, P("x", None))),
            "b": jnp.ones(8, jnp.float32, out_sharding=NamedSharding(mesh, P("x"))),
        }
        for name, make in OPTIMIZERS.items():
            opt = make()
            state0 = opt.init(params)
            types = jax.tree.map(jax.typeof, state0)
            assert jax.tree.map(jax.typeof, jax.jit(opt.init)(params)) == types, name
            _, state1 = opt.update(params, state0, params)
            assert jax.tree.map(jax.typeof, state1) == types, name
            _, state2 = jax.jit(opt.update)(params, state0, params)
            assert jax.tree.map(jax.typeof, state2) == types, name

            def step(carry, _, opt=opt):
                p, s = carry
                updates, s = opt.update(jax.tree.map(jnp.cos, p), s, p)
                return (optax.apply_updates(p, updates), s), None

            (p, _), _ = jax.lax.scan(step, (params, state0), length=3)
            assert jax.tree.map(jax.typeof, p) == jax.tree.map(jax.typeof, params), name


def main() -> None:
    assert len(jax.devices()) == 2, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("x",))
    rng = np.random.default_rng(0)
    params = {
        "conv": rng.standard_normal((3, 3, 4, 8)).astype(np.float32),  # sharded on out channels
        "dense": rng.standard_normal((6, 4)).astype(np.float32),  # sharded on the input axis
        "bias": rng.standard_normal(4).astype(np.float32),
    }
    specs = {"conv": P(None, None, None, "x"), "dense": P("x", None), "bias": P()}
    grads = [
        {
            "conv": branch_gradient(params["conv"], rng, branch, channel_axis=-1),
            "dense": branch_gradient(params["dense"], rng, branch, channel_axis=-1),
            "bias": rng.standard_normal(4),
        }
        for branch in ("channel", "layer", "none")
    ]
    grads = [jax.tree.map(lambda g: np.asarray(g, np.float32), g) for g in grads]
    for opt in (
        adamp_jax.adamp(1e-2, weight_decay=0.1),
        adamp_jax.sgdp(0.1, momentum=0.9, weight_decay=0.1),
    ):
        check(opt, mesh, specs, params, grads)
    print("sharded == unsharded")
    check_eager_init_follows_params(mesh, specs, params)
    check_explicit_mesh()
    print("state follows params")


if __name__ == "__main__":
    main()
