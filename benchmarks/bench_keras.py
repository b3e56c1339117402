"""Step time of adamp_keras against Keras' own optimizers on ResNet-50 parameter shapes.

Prints a Markdown table: median step time of ``adamp_keras.AdamP`` relative to
``keras.optimizers.AdamW`` and of ``adamp_keras.SGDP(momentum=0.9)`` relative to
``keras.optimizers.SGD(momentum=0.9)``, float32, TensorFlow backend, each step one
``optimizer.apply`` inside ``tf.function`` with and without ``jit_compile`` (XLA). All four
optimizers are timed in the same run, interleaved round by round so that a load change on the
machine hits them alike. Gradients are random (the projection costs the same whichever branch
is taken: the branch is selected with tensor ops). "Kept MiB": scratch an optimizer holds
between steps besides its state (``adamp_keras.AdamP``'s target of TensorFlow's fused kernel).

    flock /tmp/bench.lock .venv/bin/python benchmarks/bench_keras.py [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf
from adamp_keras import SGDP, AdamP

# keras.applications.ResNet50 (He et al., 2016) trainable variables: every conv has a kernel
# (kh, kw, in, out) and a bias, every BatchNormalization a gamma and a beta; bottleneck stages
# (blocks, width) with out = 4 width and a 1x1 projection shortcut in each stage's first block.
STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))
KERAS_RESNET50_TRAINABLE = 25_583_592  # sum of trainable sizes of keras.applications.ResNet50


def resnet50_shapes() -> list[tuple[int, ...]]:
    def conv_bn(kh, c_in, c_out):
        return [(kh, kh, c_in, c_out), (c_out,), (c_out,), (c_out,)]  # kernel, bias, gamma, beta

    shapes = conv_bn(7, 3, 64)
    c_in = 64
    for blocks, width in STAGES:
        for b in range(blocks):
            if b == 0:
                shapes += conv_bn(1, c_in, 4 * width)  # shortcut
            shapes += conv_bn(1, c_in, width) + conv_bn(3, width, width)
            shapes += conv_bn(1, width, 4 * width)
            c_in = 4 * width
    shapes += [(c_in, 1000), (1000,)]
    assert sum(int(np.prod(s)) for s in shapes) == KERAS_RESNET50_TRAINABLE
    return shapes


OPTIMIZERS = {
    "AdamP": lambda: AdamP(1e-3, weight_decay=1e-2),
    "AdamW": lambda: keras.optimizers.AdamW(1e-3, weight_decay=1e-2),
    "SGDP": lambda: SGDP(0.1, momentum=0.9, weight_decay=1e-4),
    "SGD": lambda: keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=1e-4),
}
PAIRS = (("AdamP", "AdamW"), ("SGDP", "SGD"))


def make_step(name: str, jit_compile: bool, shapes, seed: int = 0):
    rng = np.random.default_rng(seed)
    variables = [
        keras.Variable((0.05 * rng.standard_normal(s)).astype("float32"), name=f"v{i}")
        for i, s in enumerate(shapes)
    ]
    grads = [tf.constant((1e-3 * rng.standard_normal(s)).astype("float32")) for s in shapes]
    opt = OPTIMIZERS[name]()
    opt.build(variables)

    @tf.function(jit_compile=jit_compile)
    def step():
        opt.apply(grads, variables)

    scratch = getattr(opt, "_scratch_vars", None)
    step.kept_mib = scratch.nbytes() / 2**20 if scratch is not None else 0.0
    return step


def time_steps(step, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--modes", default="tf.function,xla", help="comma-separated")
    args = parser.parse_args()
    shapes = resnet50_shapes()

    rows = []
    for mode in args.modes.split(","):
        jit = {"tf.function": False, "xla": True}[mode]
        steps, compile_s = {}, {}
        for name in OPTIMIZERS:
            steps[name] = make_step(name, jit, shapes)
            t0 = time.perf_counter()
            steps[name]()  # trace (and compile under XLA)
            compile_s[name] = time.perf_counter() - t0
            time_steps(steps[name], 2)  # warm-up
        samples = {name: [] for name in OPTIMIZERS}
        for _ in range(args.rounds):
            for name in OPTIMIZERS:
                samples[name] += time_steps(steps[name], args.steps)
        median = {name: statistics.median(s) for name, s in samples.items()}
        for ours, base in PAIRS:
            rows.append(
                (mode, ours, base, median[ours], median[base], median[ours] / median[base],
                 compile_s[ours], compile_s[base], steps[ours].kept_mib)
            )  # fmt: skip
        del steps

    print(
        f"ResNet-50 shapes in Keras layout ({len(shapes)} variables, {KERAS_RESNET50_TRAINABLE:,}"
        f" parameters), float32, keras {keras.__version__}, tensorflow {tf.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"{datetime.date.today()}; median of {args.rounds} x {args.steps} steps per optimizer."
    )
    print()
    print(
        "| mode | ours | baseline | ours ms/step | baseline ms/step | ratio | first call s "
        "| kept MiB |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for mode, ours, base, t_ours, t_base, ratio, c_ours, c_base, kept in rows:
        print(
            f"| {mode} | {ours} | {base} | {1e3 * t_ours:.1f} | {1e3 * t_base:.1f} | "
            f"{ratio:.2f}x | {c_ours:.1f} / {c_base:.1f} | {kept:.1f} |"
        )


if __name__ == "__main__":
    main()
