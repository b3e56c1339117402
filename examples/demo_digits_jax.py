"""Part 3 through JAX: the same CNN in ``flax.linen``, optax baselines against ``adamp_jax``.

Flax kernels are ``(kh, kw, in, out)`` and ``(in, out)``: the output channel is the last axis,
the adapter's default channel axis (-1, D3). Baselines: ``optax.sgd`` after
``optax.add_decayed_weights`` (torch's coupled L2 decay), and ``optax.adamw``.
"""

from __future__ import annotations

import numpy as np
from demo_digits import (
    DELTA,
    EPS,
    OPTIMIZERS,
    PROJECTED,
    Data,
    Result,
    Tally,
    batches,
    filter_stats,
)

WEIGHTS = {
    "conv1": ("Conv_0", "kernel"),
    "conv2": ("Conv_1", "kernel"),
    "fc": ("Dense_0", "kernel"),
}


def _model():
    import flax.linen as nn

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool):
            for width in (16, 32):
                x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False)(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), (2, 2))
            return nn.Dense(10)(x.reshape(x.shape[0], -1))

    return CNN()


def _optimizer(mod, name: str, steps: int, schedule: str):
    import optax

    hp = OPTIMIZERS[name]
    lr = hp["lr"] if schedule == "constant" else optax.cosine_decay_schedule(hp["lr"], steps)
    wd = hp["weight_decay"]
    if name == "SGD":
        return optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=hp["momentum"]))
    if name == "SGDP":
        return mod.sgdp(lr, momentum=hp["momentum"], weight_decay=wd)
    if name == "AdamW":
        return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)
    return mod.adamp(lr, weight_decay=wd)


def train(
    mod, name: str, data: Data, steps: int, seed: int, schedule: str = "cosine", progress=None
) -> Result:
    """Trains the flax CNN with ``name`` (``mod`` is ``adamp_jax``, needed for SGDP / AdamP)."""
    import jax
    import jax.numpy as jnp
    import optax

    model = _model()
    variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 8, 8, 1)), train=False)
    params, stats = variables["params"], variables["batch_stats"]
    tx = _optimizer(mod, name, steps, schedule)
    opt_state = tx.init(params)
    projected = name in PROJECTED
    on_device = projected and hasattr(mod, "decide")

    def loss_fn(params, stats, x, y):
        logits, new = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, new["batch_stats"]

    @jax.jit
    def step(params, stats, opt_state, x, y):
        grads, stats = jax.grad(loss_fn, has_aux=True)(params, stats, x, y)
        codes = mod.decide(params, grads, delta=DELTA, eps=EPS) if on_device else None
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, grads, codes

    @jax.jit
    def predict(params, stats, x):
        return model.apply({"params": params, "batch_stats": stats}, x, train=False).argmax(-1)

    order, per_epoch = batches(len(data.y_train), steps, seed)
    tally = Tally(list(WEIGHTS))
    acc, fnorm, eff = [], [], []

    def kernel(tree, key):
        a, b = WEIGHTS[key]
        return np.asarray(tree[a][b])

    def record():
        acc.append(float(np.mean(np.asarray(predict(params, stats, data.x_test)) == data.y_test)))
        n, e = filter_stats(
            [kernel(params, "conv1"), kernel(params, "conv2")], OPTIMIZERS[name]["lr"], -1
        )
        fnorm.append(n)
        eff.append(e)

    record()
    for t, idx in enumerate(order):
        before = params
        params, stats, opt_state, grads, codes = step(
            params, stats, opt_state, data.x_train[idx], data.y_train[idx]
        )
        if on_device:  # the adapter's own decision, one int per weight
            tally.steps += 1
            for k, (a, b) in WEIGHTS.items():
                code = int(codes[a][b])
                if code:
                    tally.views[k][mod.VIEWS[code]] += 1
        elif projected:
            tally.add({k: (kernel(before, k), kernel(grads, k)) for k in WEIGHTS}, -1)
        if (t + 1) % per_epoch == 0 or t + 1 == steps:
            record()
        if progress is not None:
            progress(1)
    shares = tally.shares() if projected else {}
    return Result(name, seed, acc, fnorm, eff, shares, tally.views if projected else {})
