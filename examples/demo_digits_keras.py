"""Part 3 through Keras 3: the same CNN as a ``keras.Sequential``, trained with ``model.fit``.

Keras kernels are ``(kh, kw, in, out)`` and ``(in, out)``: the adapter's default channel axis,
taken from the owning ``Conv2D`` and ``Dense`` layers, is the last one (D3). The projection
share comes from the adapter's own counters (``track_projection=True``). Baselines:
``keras.optimizers.SGD`` with torch's coupled L2 decay (an L2 regulariser of ``wd / 2`` on every
variable adds ``wd * w`` to each gradient), and ``keras.optimizers.AdamW``. Runs on whichever
Keras backend is configured.
"""

from __future__ import annotations

import numpy as np
from demo_digits import OPTIMIZERS, PROJECTED, Data, Result, batches, filter_stats


def _model(coupled_decay: float):
    import keras
    from keras import layers

    reg = keras.regularizers.L2(coupled_decay / 2) if coupled_decay else None
    conv = dict(padding="same", use_bias=False, kernel_regularizer=reg)
    bn = dict(momentum=0.9, epsilon=1e-5, gamma_regularizer=reg, beta_regularizer=reg)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(16, 3, name="conv1", **conv),
            layers.BatchNormalization(**bn),
            layers.ReLU(),
            layers.Conv2D(32, 3, name="conv2", **conv),
            layers.BatchNormalization(**bn),
            layers.ReLU(),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(10, name="fc", kernel_regularizer=reg, bias_regularizer=reg),
        ]
    )


def _optimizer(mod, name: str, steps: int, schedule: str):
    import keras

    hp = OPTIMIZERS[name]
    lr = hp["lr"]
    if schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
    wd = hp["weight_decay"]
    if name == "SGD":  # decay through the regularisers of the model
        return keras.optimizers.SGD(lr, momentum=hp["momentum"])
    if name == "SGDP":
        return mod.SGDP(lr, momentum=hp["momentum"], weight_decay=wd, track_projection=True)
    if name == "AdamW":
        return keras.optimizers.AdamW(lr, weight_decay=wd, epsilon=1e-8)
    return mod.AdamP(lr, weight_decay=wd, track_projection=True)


def train(
    mod, name: str, data: Data, steps: int, seed: int, schedule: str = "cosine", progress=None
) -> Result:
    """Trains the Keras CNN with ``name`` (``mod`` is ``adamp_keras``, needed for SGDP / AdamP)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = _model(OPTIMIZERS["SGD"]["weight_decay"] if name == "SGD" else 0.0)
    opt = _optimizer(mod, name, steps, schedule)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    order, per_epoch = batches(len(data.y_train), steps, seed)
    convs = [model.get_layer("conv1").kernel, model.get_layer("conv2").kernel]
    acc, fnorm, eff = [], [], []

    def record():
        logits = keras.ops.convert_to_numpy(model(data.x_test, training=False))
        acc.append(float(np.mean(logits.argmax(-1) == data.y_test)))
        kernels = [keras.ops.convert_to_numpy(k) for k in convs]
        n, e = filter_stats(kernels, OPTIMIZERS[name]["lr"], -1)
        fnorm.append(n)
        eff.append(e)

    class Epochs(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if (batch + 1) % per_epoch == 0 or batch + 1 == steps:
                record()
            if progress is not None:
                progress(1)

    record()
    flat = order.reshape(-1)  # the batch order of every backend, one "epoch" of `steps` batches
    model.fit(
        data.x_train[flat],
        data.y_train[flat],
        batch_size=order.shape[1],
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[Epochs()],
    )
    shares, views = {}, {}
    if name in PROJECTED:
        counts = opt.projection_counts()
        for key in ("conv1", "conv2", "fc"):
            path = model.get_layer(key).kernel.path
            c, layer = counts.get(path, (0, 0))
            views[key] = {"channel": c, "layer": layer}
            shares[key] = (c + layer) / steps
    return Result(name, seed, acc, fnorm, eff, shares, views)
