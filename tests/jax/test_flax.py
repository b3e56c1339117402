"""A real Flax model: a small CNN with BatchNorm trained with adamp_jax.adamp on digits.

Each conv kernel is followed by BatchNorm over its output channels, so the loss is invariant to
scaling any output channel of the kernel, and its gradient is orthogonal to each channel's
weights (the paper's premise, section 2). Flax stores a conv kernel as (kh, kw, in, out): the
default ``channel_axis=-1`` must see that orthogonality on every step, while ``channel_axis=0``
groups by kernel height and must see no more than random gradients do.
"""

from __future__ import annotations

import adamp_jax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

STEPS = 300
BATCH = 64


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        for features in (8, 16):
            x = nn.Conv(features, (3, 3), use_bias=False)(x)  # a bias before BN is redundant
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.relu(x)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


def conv_views(codes):
    return [int(codes["params"][name]["kernel"]) for name in ("Conv_0", "Conv_1")]


def test_cnn_with_batchnorm_trains_and_conv_kernels_are_detected_on_the_right_axis():
    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype(np.float32)
    y = digits.target
    model = CNN()
    variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x[:2]), train=False)
    params, stats = {"params": variables["params"]}, variables["batch_stats"]
    opt = adamp_jax.adamp(1e-2, weight_decay=1e-4)
    opt_state = opt.init(params)

    def loss_fn(params, stats, xb, yb):
        logits, new = model.apply(
            {**params, "batch_stats": stats}, xb, train=True, mutable=["batch_stats"]
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
        return loss, new["batch_stats"]

    @jax.jit
    def step(params, stats, opt_state, xb, yb, key):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, xb, yb)
        noise = jax.tree.map(
            lambda g: jax.random.normal(key, g.shape, g.dtype), grads
        )  # chance level: the same test on random directions
        views = {
            "default": adamp_jax.decide(params, grads),
            "axis0": adamp_jax.decide(params, grads, channel_axis=0),
            "random": adamp_jax.decide(params, noise, channel_axis=0),
        }
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss, views

    rng = np.random.default_rng(0)
    losses, counts = [], {k: np.zeros((2, 3)) for k in ("default", "axis0", "random")}
    for i in range(STEPS):
        idx = rng.choice(len(x), BATCH, replace=False)
        params, stats, opt_state, loss, views = step(
            params, stats, opt_state, x[idx], y[idx], jax.random.PRNGKey(i)
        )
        losses.append(float(loss))
        for k, codes in views.items():
            for layer, view in enumerate(conv_views(codes)):
                counts[k][layer, view] += 1
    rate = {k: c / STEPS for k, c in counts.items()}  # [layer, view]: share of steps
    print(
        f"loss {np.mean(losses[:30]):.3f} -> {np.mean(losses[-30:]):.3f}; rates [none, channel,"
        f" layer] per conv layer: { ({k: v.tolist() for k, v in rate.items()}) }"
    )

    # Training works: log(10) = 2.30 at chance; the mean loss falls by more than half.
    assert np.mean(losses[-30:]) < 0.5 * np.mean(losses[:30])
    # Default axis: the channel view (VIEWS[1]) fires on (nearly) every step for both kernels.
    assert np.all(rate["default"][:, 1] >= 0.95), rate["default"]
    # Axis 0 groups by kernel height: the channel view fires no more often than on random
    # gradients (whose rate for these shapes is about 0; margin for a few chance hits).
    assert np.all(rate["axis0"][:, 1] <= rate["random"][:, 1] + 0.05), (rate["axis0"], rate)
    # The gradient is still orthogonal to the kernel as a whole, so the layer view takes over:
    # a weaker projection that leaves each channel's radial component in place.
    assert np.all(rate["axis0"][:, 2] >= 0.95), rate["axis0"]
