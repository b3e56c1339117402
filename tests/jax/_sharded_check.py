"""Run by test_sharding.py in a fresh process: XLA_FLAGS must give two CPU devices before jax
is imported. Sharded and unsharded AdamP / SGDP steps must agree, and keep the shardings."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()

import adamp_jax
import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
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


if __name__ == "__main__":
    main()
