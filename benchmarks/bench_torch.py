"""Step time and peak extra memory of adamp_torch against torch.optim and other AdamP ports.

ResNet-50 parameter shapes (25,557,032 parameters, built from the architecture table below, no
torchvision), float32, CPU, 2 threads. Two gradient kinds: random Gaussian, and
scale-invariant (every conv weight's gradient orthogonal to each of its output channels, as
behind a BatchNorm; the rest random). Every number is printed as a ratio to a baseline
measured in the same run: AdamP-like rows against ``AdamW(foreach=True)``, SGDP-like rows
against ``SGD(momentum=0.9, foreach=True)``.

Peak extra memory is the growth of the process's peak resident set during one step (after
state exists), with glibc told to map every allocation above 64 KiB separately so that freed
temporaries leave the resident set.

Run: ``python benchmarks/bench_torch.py`` (about 3 minutes on 2 cores); ``--no-compile`` skips
the ``torch.compile`` rows, ``--steps N`` sets the timed steps per row.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # before torch allocates anything
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch

RESNET50_PARAMS = 25_557_032  # torchvision's resnet50 parameter count


def resnet50_shapes() -> list[tuple[tuple[int, ...], bool]]:
    """(shape, followed_by_batchnorm) of every ResNet-50 parameter, in model order."""
    out: list[tuple[tuple[int, ...], bool]] = []

    def conv_bn(cout: int, cin: int, k: int) -> None:
        out.append(((cout, cin, k, k), True))
        out.append(((cout,), False))  # BN weight
        out.append(((cout,), False))  # BN bias

    conv_bn(64, 3, 7)
    cin = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):  # bottleneck stages
        for b in range(blocks):
            conv_bn(planes, cin, 1)
            conv_bn(planes, planes, 3)
            conv_bn(planes * 4, planes, 1)
            if b == 0:
                conv_bn(planes * 4, cin, 1)  # downsample
            cin = planes * 4
    out.append(((1000, 2048), False))
    out.append(((1000,), False))
    return out


def make_problem(kind: str, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape, invariant in resnet50_shapes():
        p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.05)
        g = torch.randn(shape, generator=gen) * 1e-3
        if kind == "scale-invariant" and invariant:
            p2, g2 = p.detach().view(shape[0], -1), g.view(shape[0], -1)
            g2 -= p2 * ((p2 * g2).sum(1, keepdim=True) / (p2 * p2).sum(1, keepdim=True))
        p.grad = g
        params.append(p)
    assert sum(p.numel() for p in params) == RESNET50_PARAMS
    return params


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024


def peak_extra(step) -> int:
    """Bytes by which one call of ``step`` raises the peak resident set (Linux only)."""
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    step()
    return _status("VmHWM") - before


def state_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for s in opt.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.numel() > 1
    )


def measure(factory, kind: str, steps: int, compile_step: bool = False) -> dict:
    params = make_problem(kind)
    opt = factory(params)
    step = opt.step
    cold = None
    if compile_step:
        step = torch.compile(opt.step)
        t0 = time.perf_counter()
        step()
        cold = time.perf_counter() - t0
    step()
    step()
    mem = peak_extra(step)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"ms": 1e3 * times[len(times) // 2], "mem": mem, "state": state_bytes(opt), "cold": cold}


def optimizers() -> dict[str, tuple[str, object]]:
    import adamp
    import adamp_torch
    import pytorch_optimizer

    lr, wd = 1e-3, 1e-2
    return {
        "AdamW(foreach=True)": ("adam", lambda p: torch.optim.AdamW(p, lr, weight_decay=wd)),
        "AdamW(fused=True)": (
            "adam",
            lambda p: torch.optim.AdamW(p, lr, weight_decay=wd, fused=True),
        ),
        "adamp_torch.AdamP": ("adam", lambda p: adamp_torch.AdamP(p, lr, weight_decay=wd)),
        "adamp.AdamP 0.3.0 (official)": ("adam", lambda p: adamp.AdamP(p, lr, weight_decay=wd)),
        "pytorch_optimizer.AdamP": (
            "adam",
            lambda p: pytorch_optimizer.AdamP(p, lr, weight_decay=wd),
        ),
        "SGD(momentum=0.9, foreach=True)": (
            "sgd",
            lambda p: torch.optim.SGD(p, 0.1, momentum=0.9, weight_decay=wd, foreach=True),
        ),
        "adamp_torch.SGDP": ("sgd", lambda p: adamp_torch.SGDP(p, 0.1, 0.9, weight_decay=wd)),
        "adamp.SGDP 0.3.0 (official)": ("sgd", lambda p: adamp.SGDP(p, 0.1, 0.9, weight_decay=wd)),
        "pytorch_optimizer.SGDP": (
            "sgd",
            lambda p: pytorch_optimizer.SGDP(p, 0.1, 0.9, weight_decay=wd),
        ),
    }


COMPILED = (
    "AdamW(foreach=True)",
    "adamp_torch.AdamP",
    "SGD(momentum=0.9, foreach=True)",
    "adamp_torch.SGDP",
)
BASELINE = {"adam": "AdamW(foreach=True)", "sgd": "SGD(momentum=0.9, foreach=True)"}
KINDS = ("random", "scale-invariant")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=7, help="timed steps per row (median)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    ap.add_argument("--only", default="", help="comma-separated row names to run")
    args = ap.parse_args()
    torch.set_num_threads(2)
    opts = optimizers()
    only = [s for s in args.only.split(",") if s]
    rows: dict[tuple[str, bool], dict[str, dict]] = {}
    for name, (family, factory) in opts.items():
        for compiled in (False, True):
            if compiled and (args.no_compile or name not in COMPILED):
                continue
            if only and name not in only and BASELINE[family] != name:
                continue
            rows[(name, compiled)] = {
                kind: measure(factory, kind, args.steps, compiled) for kind in KINDS
            }
            print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, "
        f"{RESNET50_PARAMS:,} float32 parameters (ResNet-50 shapes)"
    )
    head = (
        f"| {'optimizer':40} | {'random ms':>9} | {'ratio':>5} | {'scale-inv ms':>12} | "
        f"{'ratio':>5} | {'peak extra MB':>13} | {'ratio':>5} | {'state MB':>8} | {'cold s':>6} |"
    )
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for (name, compiled), res in rows.items():
        family = opts[name][0]
        base = rows.get((BASELINE[family], compiled)) or rows[(BASELINE[family], False)]
        label = f"compile({name})" if compiled else name
        r, s = res["random"], res["scale-invariant"]
        cold = max(r["cold"], s["cold"]) if compiled else None
        mem_ratio = r["mem"] / max(base["random"]["mem"], 1)
        print(
            f"| {label:40} | {r['ms']:9.1f} | {r['ms'] / base['random']['ms']:5.2f} | "
            f"{s['ms']:12.1f} | {s['ms'] / base['scale-invariant']['ms']:5.2f} | "
            f"{r['mem'] / 2**20:13.1f} | {mem_ratio:5.2f} | {r['state'] / 2**20:8.1f} | "
            f"{(f'{cold:6.1f}' if cold is not None else '-'):>6} |"
        )
    print(
        "ratio: to AdamW(foreach=True) for AdamP rows, to SGD(momentum=0.9, foreach=True) for "
        "SGDP rows; compiled rows to the compiled baseline. Peak extra: one step, random grads."
    )


if __name__ == "__main__":
    main()
