"""Step time and memory of adamp_jax against optax on ResNet-50 parameter shapes.

Prints a Markdown table: median step time of ``adamp_jax.adamp`` relative to ``optax.adamw`` and
of ``adamp_jax.sgdp`` relative to ``optax.sgd(momentum=0.9)``, all measured in this run, with
random gradients and with scale-invariant ones (each conv kernel's gradient orthogonal to its
output channels, as behind BatchNorm, so the channel view fires). Every step is one ``jax.jit``
call with the params and the optimizer state donated. Memory is XLA's own account of the
compiled step (``memory_analysis``): optimizer state, and temporary buffers at the peak; traffic
is its count of bytes read and written per step (``cost_analysis``), which does not depend on
the machine's load: the number of passes over the arrays, summed. ``mu_dtype=bfloat16`` shows
AdamP with a bfloat16 first moment.
The header names ``XLA_FLAGS``: docs/benchmarks.md has runs with XLA's default CPU scheduler and
with ``--xla_cpu_enable_concurrency_optimized_scheduler=false``.

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_jax.py [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import adamp_jax
import jax
import jax.numpy as jnp
import numpy as np
import optax

# ResNet-50 (He et al., 2016) in Flax layout: conv kernels (kh, kw, in, out), BatchNorm scale and
# bias per channel, a Dense kernel (in, out). Bottleneck stages: (blocks, width); out = 4 width.
STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))
RESNET50_PARAMS = 25_557_032  # torchvision's resnet50 parameter count, same architecture


def resnet50_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {"conv_init": (7, 7, 3, 64), "bn_init/scale": (64,), "bn_init/bias": (64,)}
    c_in = 64
    for s, (blocks, width) in enumerate(STAGES):
        for b in range(blocks):
            convs = [(1, 1, c_in, width), (3, 3, width, width), (1, 1, width, 4 * width)]
            if b == 0:
                convs.append((1, 1, c_in, 4 * width))  # projection shortcut
            for i, k in enumerate(convs):
                name = f"stage{s}_block{b}/conv{i}"
                shapes[name] = k
                shapes[name + "_bn/scale"] = shapes[name + "_bn/bias"] = (k[-1],)
            c_in = 4 * width
    shapes["head/kernel"], shapes["head/bias"] = (c_in, 1000), (1000,)
    assert sum(int(np.prod(x)) for x in shapes.values()) == RESNET50_PARAMS
    return shapes


def make_problem(kind: str, seed: int = 0):
    key = jax.random.PRNGKey(seed)
    params, grads = {}, {}
    for i, (name, shape) in enumerate(resnet50_shapes().items()):
        kp, kg = jax.random.split(jax.random.fold_in(key, i))
        p = jax.random.normal(kp, shape, jnp.float32) * 0.05
        g = jax.random.normal(kg, shape, jnp.float32) * 1e-3
        if kind == "scale-invariant" and "conv" in name and "_bn" not in name:
            red = tuple(range(len(shape) - 1))  # per output channel (last axis)
            g = g - p * jnp.sum(g * p, red, keepdims=True) / jnp.sum(p * p, red, keepdims=True)
        params[name], grads[name] = p, g
    return params, grads


OPTIMIZERS = {
    "optax.adamw": lambda: optax.adamw(1e-3, weight_decay=1e-2),
    "adamp_jax.adamp": lambda: adamp_jax.adamp(1e-3, weight_decay=1e-2),
    "adamp_jax.adamp(mu_dtype=bfloat16)": lambda: adamp_jax.adamp(
        1e-3, weight_decay=1e-2, mu_dtype="bfloat16"
    ),
    "optax.sgd(momentum=0.9)": lambda: optax.sgd(0.1, momentum=0.9),
    "adamp_jax.sgdp": lambda: adamp_jax.sgdp(0.1, momentum=0.9, weight_decay=1e-5),
}
BASELINE = {
    "adamp_jax.adamp": "optax.adamw",
    "adamp_jax.adamp(mu_dtype=bfloat16)": "optax.adamw",
    "adamp_jax.sgdp": "optax.sgd(momentum=0.9)",
}


def compiled_step(opt, params, grads):
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = opt.init(params)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
    mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # a list of one dict in older jax
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    return compiled, state, state_bytes, mem.temp_size_in_bytes, cost["bytes accessed"]


def bench(kind: str, steps: int, rounds: int) -> dict[str, dict]:
    params0, grads = make_problem(kind)
    runs = {}
    for name, make in OPTIMIZERS.items():
        params = jax.tree.map(jnp.copy, params0)
        compiled, state, state_bytes, temp, traffic = compiled_step(make(), params, grads)
        params, state = compiled(params, state, grads)  # warm-up
        jax.block_until_ready(params)
        runs[name] = {"fn": compiled, "carry": (params, state), "times": []}
        runs[name].update(
            state_mb=state_bytes / 2**20, temp_mb=temp / 2**20, traffic_mb=traffic / 2**20
        )
    for _ in range(rounds):  # interleaved, so that drift of the machine hits all alike
        for run in runs.values():
            params, state = run["carry"]
            for _ in range(steps):
                t0 = time.perf_counter()
                params, state = run["fn"](params, state, grads)
                jax.block_until_ready(params)
                run["times"].append(time.perf_counter() - t0)
            run["carry"] = (params, state)
    for run in runs.values():
        run["median_ms"] = 1e3 * statistics.median(run["times"])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    print(
        f"{datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__}, optax {optax.__version__}, "
        f"{RESNET50_PARAMS:,} float32 params, median of {args.steps * args.rounds} steps, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}\n"
    )
    print(
        "| gradients | optimizer | step (ms) | ratio to baseline | state (MiB) | temp (MiB) "
        "| traffic (MiB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for kind in ("random", "scale-invariant"):
        runs = bench(kind, args.steps, args.rounds)
        for name, run in runs.items():
            base = BASELINE.get(name)
            ratio = f"{run['median_ms'] / runs[base]['median_ms']:.2f}x" if base else "1 (baseline)"
            print(
                f"| {kind} | {name} | {run['median_ms']:.1f} | {ratio} | "
                f"{run['state_mb']:.0f} | {run['temp_mb']:.0f} | {run['traffic_mb']:.0f} |"
            )


if __name__ == "__main__":
    main()
