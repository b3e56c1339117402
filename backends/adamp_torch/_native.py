"""AdamP and SGDP steps for CPU tensors in C (``_native.c``): two passes per tensor.

In torch ops a step is a pass over memory per equation, and each of the projection's sums
``<g,p>``, ``<p,u>`` writes its product out and reads it back (PyTorch has no reduction over a
product of two tensors). The C step reads each tensor twice: once to update the state and take
the row sums with ``u`` formed in registers, once to apply the step with ``u`` formed again.
On ResNet-50 shapes with 2 threads that is about 0.6x the time of ``AdamW(foreach=True)`` and
``SGD(foreach=True)`` (docs/benchmarks.md). Under ``torch.compile`` it is called as the operator
``adamp_torch::projected_step_``.

The C file is compiled on first use with the system's C compiler (``$CC``, else ``cc``) into a
cache folder (``$ADAMP_TORCH_CACHE``, else ``$XDG_CACHE_HOME/adamp_torch``, else
``~/.cache/adamp_torch``), keyed by a hash of the source and the command, and loaded with
ctypes. Without a compiler, on a failed build, or with ``ADAMP_TORCH_NATIVE=0``, steps take the
torch ops; ``status()`` says which and why. Nothing here runs at import.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adamp_core import check_channel_axis
from adamp_torch import _kernel

SOURCE = Path(__file__).with_name("_native.c")
FLAGS = ["-O3", "-fno-math-errno", "-shared", "-fPIC", "-fopenmp"]
DTYPES = {torch.float32: 0, torch.float64: 1}

_lib: ctypes.CDLL | None = None
_why: str | None = None  # None: not tried yet


def _cache_dir() -> Path:
    if os.environ.get("ADAMP_TORCH_CACHE"):
        return Path(os.environ["ADAMP_TORCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adamp_torch"


def _build() -> ctypes.CDLL:
    """Compiles ``_native.c`` unless a library from the same source and command is cached."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    tag = hashlib.sha256(
        SOURCE.read_bytes() + repr((cc, FLAGS, platform.machine(), sys.platform)).encode()
    ).hexdigest()[:16]
    folder = _cache_dir()
    lib = folder / f"adamp_torch-{tag}.so"
    if not lib.exists():
        folder.mkdir(parents=True, exist_ok=True)
        # Built under a temporary name, then renamed: processes building at once (one per
        # rank) each rename a complete library.
        fd, tmp = tempfile.mkstemp(prefix=lib.stem, suffix=".so", dir=folder)
        os.close(fd)
        try:
            done = subprocess.run(
                [*cc, *FLAGS, str(SOURCE), "-o", tmp, "-lm"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cc)} failed: {done.stderr.strip()[-500:]}")
            os.replace(tmp, lib)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    out = ctypes.CDLL(str(lib))
    for fn in (out.adamp_step, out.sgdp_step):
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_int]  # fmt: skip
    return out


def library() -> ctypes.CDLL | None:
    """The loaded library, built on the first call; None where it cannot be had."""
    global _lib, _why
    if _why is None:
        if os.environ.get("ADAMP_TORCH_NATIVE", "1") == "0":
            _why = "disabled by ADAMP_TORCH_NATIVE=0"
        else:
            try:
                _lib = _build()
                _why = f"in use ({_lib._name})"
            except (OSError, RuntimeError, subprocess.SubprocessError, ValueError) as err:
                _why = f"torch ops in use: the C step could not be built ({err})"
    return _lib


def status() -> str:
    """Whether the C step is in use, and why not where it is not (builds it)."""
    library()
    return _why or ""


def reset() -> None:
    """Forgets the library, so that the next step looks again (for tests)."""
    global _lib, _why
    _lib, _why = None, None


# ----------------------------------------------------------------------------- whole steps

PSEUDO_ROW = 1 << 14  # elements per share of an untested tensor's work


class _Hyper(ctypes.Structure):
    _fields_ = [
        *[(k, ctypes.c_double) for k in ("lr", "beta1", "beta2", "eps", "weight_decay")],
        *[(k, ctypes.c_double) for k in ("delta", "wd_ratio", "momentum", "dampening")],
        *[(k, ctypes.c_int64) for k in ("nesterov", "project_buffer", "f64")],
    ]


def _dense(x: Tensor) -> bool:
    """Whether ``x`` covers one block of memory with dim 0 outermost: contiguous, or
    channels_last; each row (dim 0) is then a block of its own."""
    if x.is_contiguous():
        return True
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return fmt is not None and x.is_contiguous(memory_format=fmt)


def step_applies(
    channel_axis: Any, ps: Sequence[Tensor], gs: Sequence[Tensor], kept: Sequence[Sequence[Tensor]]
) -> list[bool] | None:
    """Whether the C step can take a param group (``kept``: lists of state tensors), and then
    which of its tensors are tested (D4); None where it cannot. It needs the library built
    (under ``torch.compile``: by an earlier ``library()`` call), plain (not DTensor) CPU tensors,
    params and grads of one dtype, state in its compute dtype (D9), each param tested along dim
    0 or untested, and each param's grad and state laid out as the param, contiguous or
    channels_last."""
    first = ps[0]
    if first.device.type != "cpu" or not first.is_floating_point():
        return None
    if (_lib if torch.compiler.is_compiling() else library()) is None:
        return None
    state_dtype = _kernel.compute_dtype(first.dtype)
    tested = []
    for i, p in enumerate(ps):
        axis = check_channel_axis(channel_axis, tuple(p.shape)) if p.numel() else None
        if axis not in (0, None) or _kernel.is_dtensor(p) or not _dense(p):
            return None
        if gs[i].dtype != first.dtype or p.dtype != first.dtype or gs[i].stride() != p.stride():
            return None
        if any(k[i].dtype != state_dtype or k[i].stride() != p.stride() for k in kept):
            return None
        tested.append(axis is not None)
    return tested


def _step_impl(
    params: list[Tensor],
    grads: list[Tensor],
    s1: list[Tensor],
    s2: list[Tensor],
    steps: list[Tensor],
    tested: list[bool],
    lr: Tensor | None,
    hyper: list[float],
    sgdp: bool,
) -> Tensor:
    """One step of a bucket in C. ``hyper``: lr (unless ``lr`` is given as a tensor), beta1,
    beta2, eps, weight_decay, delta, wd_ratio, momentum, dampening, nesterov, project_buffer.
    Returns the view codes (T,) as int8."""
    table = []
    for i, (p, g, a) in enumerate(zip(params, grads, s1, strict=True)):
        n = p.numel()
        cols = n // p.shape[0] if tested[i] else PSEUDO_ROW
        rows = p.shape[0] if tested[i] else -(-n // cols)
        b = s2[i].data_ptr() if s2 else 0
        t = int(steps[i]) if steps else 0  # A1: counts are whole numbers
        table += [p.data_ptr(), g.data_ptr(), a.data_ptr(), b, n, rows, cols, tested[i], t]
    if lr is not None:
        hyper = [float(lr), *hyper[1:]]
    h = _Hyper(*hyper[:9], int(hyper[9]), int(hyper[10]), DTYPES[params[0].dtype])
    views = torch.empty(len(params), dtype=torch.int8)
    fn = _lib.sgdp_step if sgdp else _lib.adamp_step
    args = (ctypes.c_int64 * len(table))(*table), len(params), ctypes.byref(h)
    if fn(*args, views.data_ptr(), torch.get_num_threads()):
        raise MemoryError("adamp_torch: no memory for the step's scratch (nothing was written)")
    return views


# The same function as a PyTorch operator, for torch.compile: Inductor calls it as it is (it
# would not fuse the two passes per tensor any better). Eager steps call _step_impl directly,
# without the dispatcher's conversion of the tensor lists (about 0.1 ms per bucket).
_step_op = torch.library.custom_op(
    "adamp_torch::projected_step_", mutates_args=("params", "s1", "s2"), device_types="cpu"
)(_step_impl)


@_step_op.register_fake
def _(params, grads, s1, s2, steps, tested, lr, hyper, sgdp):
    return params[0].new_empty(len(params), dtype=torch.int8)


def _call(group, tested, ps, gs, s1, s2, steps, hyper, sgdp) -> Tensor:
    lr = group["lr"]
    tensor_lr = lr if isinstance(lr, Tensor) else None
    hyper = [0.0 if tensor_lr is not None else float(lr), *map(float, hyper)]
    fn = _step_op if torch.compiler.is_compiling() else _step_impl
    return fn(ps, gs, s1, s2, steps, tested, tensor_lr, hyper, sgdp)


def adamp_step(group, tested, ps, gs, ms, vs, steps) -> Tensor:
    """One AdamP step (A2-A8) of a param group where ``step_applies``, ``steps`` already
    counted (A1); returns the view codes (T,)."""
    b1, b2 = group["betas"]
    hyper = (b1, b2, group["eps"], group["weight_decay"], group["delta"], group["wd_ratio"],
             0.0, 0.0, group["nesterov"], False)  # fmt: skip
    return _call(group, tested, ps, gs, ms, vs, steps, hyper, False)


def sgdp_step(group, tested, ps, gs, bufs) -> Tensor:
    """One SGDP step (S1-S6) of a param group where ``step_applies``; returns the views."""
    hyper = (
        0.0,
        0.0,
        group["eps"],
        group["weight_decay"],
        group["delta"],
        group["wd_ratio"],
        group["momentum"],
        group["dampening"],
        group["nesterov"],
        group["project_buffer"],
    )
    return _call(group, tested, ps, gs, bufs, [], [], hyper, True)
