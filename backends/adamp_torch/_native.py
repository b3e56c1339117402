"""AdamP and SGDP steps for CPU tensors in C (``_native.c``): two passes per tensor.

In torch ops a step is a pass over memory per equation, and each of the projection's sums
``<g,p>``, ``<p,u>`` writes its product out and reads it back (PyTorch has no reduction over a
product of two tensors). The C step reads each tensor twice: once to update the state and take
the row sums with ``u`` formed in registers, once to apply the step with ``u`` formed again.
On ResNet-50 shapes with 2 threads that is about 0.6x the time of ``AdamW(foreach=True)`` and
``SGD(foreach=True)`` (docs/benchmarks.md). Under ``torch.compile`` it is called as the operator
``adamp_torch::projected_step_``. The optimizers reach it as their implementation
``impl="native"``; ``why_not`` is its eligibility predicate.

The C file is compiled on first use with the system's C compiler (``$CC``, else ``cc``) into a
cache folder (``$ADAMP_TORCH_CACHE``, else ``$XDG_CACHE_HOME/adamp_torch``, else
``~/.cache/adamp_torch``) and loaded with ctypes. The folder must belong to the user and be
writable by nobody else; the library is written under a temporary name and renamed, its SHA-256
is recorded beside it and checked before every load, and the loaded library must report the
tag it was built with. A library that is missing, truncated, foreign or fails a check is
rebuilt, never loaded. Without a compiler, on a failed build, in an unsafe folder, or with
``ADAMP_TORCH_NATIVE`` set to ``0``/``false``/``no``/``off``, the library is not used;
``status()`` says which and why. Nothing here runs at import.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shlex
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from adamp_torch import _kernel

SOURCE = Path(__file__).with_name("_native.c")
FLAGS = ["-O3", "-fno-math-errno", "-shared", "-fPIC", "-fopenmp"]
DTYPES = {torch.float32: 0, torch.float64: 1}
OFF = ("0", "false", "no", "off")
ON = ("", "1", "true", "yes", "on")

_lib: ctypes.CDLL | None = None
_why: str | None = None  # None: not tried yet
_warned = False


def _cache_dir() -> Path:
    if os.environ.get("ADAMP_TORCH_CACHE"):
        return Path(os.environ["ADAMP_TORCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adamp_torch"


def _private(path: Path, what: str) -> None:
    """Raises unless ``path`` belongs to this user and nobody else may write it: anyone who can
    write the cache can run code in every process that loads from it."""
    st = os.stat(path)
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise PermissionError(
            f"{what} {path} belongs to user id {st.st_uid}, not to this user "
            f"({os.getuid()}); set ADAMP_TORCH_CACHE to a folder of your own"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(
            f"{what} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"refusing to build or load the C step there: chmod go-w it or set "
            "ADAMP_TORCH_CACHE to a private folder"
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(lib: Path, record: Path) -> bool:
    """Whether ``lib`` is there, private, and has the content hash recorded beside it."""
    try:
        _private(lib, "library")
        return record.read_text().strip() == _sha256(lib)
    except (OSError, ValueError):
        return False


def _compile(cc: list[str], abi: int, folder: Path, lib: Path, record: Path) -> None:
    """Builds into a temporary file of ``folder`` and renames it into place, hash record first:
    processes building at once (one per rank) each rename a complete file."""
    fd, tmp = tempfile.mkstemp(prefix=lib.stem, suffix=".so", dir=folder)
    os.close(fd)
    fd, tmp_record = tempfile.mkstemp(prefix=lib.stem, suffix=".sha256", dir=folder)
    os.close(fd)
    try:
        cmd = [*cc, *FLAGS, f"-DADAMP_TORCH_ABI={abi}", str(SOURCE), "-o", tmp, "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cc)} failed: {done.stderr.strip()[-500:]}")
        if os.path.getsize(tmp) == 0:
            raise RuntimeError(f"{' '.join(cc)} wrote an empty library")
        os.chmod(tmp, 0o700)
        Path(tmp_record).write_text(_sha256(Path(tmp)) + "\n")
        os.replace(tmp_record, record)
        os.replace(tmp, lib)
    finally:
        for path in (tmp, tmp_record):
            if os.path.exists(path):
                os.unlink(path)


def _build() -> ctypes.CDLL:
    """Loads the library of this source and command from the cache, built first unless a
    verified one is there."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    digest = hashlib.sha256(
        SOURCE.read_bytes() + repr((cc, FLAGS, platform.machine(), sys.platform)).encode()
    ).hexdigest()
    tag, abi = digest[:16], int(digest[:15], 16)
    folder = _cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _private(folder, "cache folder")
    lib, record = folder / f"adamp_torch-{tag}.so", folder / f"adamp_torch-{tag}.sha256"
    if not _verified(lib, record):
        _compile(cc, abi, folder, lib, record)
        if not _verified(lib, record):  # replaced between the rename and here
            raise RuntimeError(f"{lib} changed while it was being built")
    out = ctypes.CDLL(str(lib))
    try:
        version = out.adamp_torch_abi
        version.restype, version.argtypes = ctypes.c_int64, []
        fns = (out.adamp_step, out.sgdp_step)
    except AttributeError as err:
        raise RuntimeError(f"{lib} is not a build of {SOURCE.name} ({err})") from None
    if version() != abi:
        raise RuntimeError(f"{lib} reports tag {version()}, not {abi}: not this source's build")
    for fn in fns:
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                       ctypes.c_int]  # fmt: skip
    return out


def disabled() -> bool:
    """Whether ``ADAMP_TORCH_NATIVE`` turns the C step off (read at every call)."""
    value = os.environ.get("ADAMP_TORCH_NATIVE", "").strip().lower()
    if value not in OFF + ON:
        raise ValueError(
            f"ADAMP_TORCH_NATIVE must be one of {', '.join(OFF + ON[1:])} (got {value!r})"
        )
    return value in OFF


def library() -> ctypes.CDLL | None:
    """The loaded library, built on the first call; None where it cannot be had or is
    disabled."""
    global _lib, _why
    if disabled():
        return None
    if _why is None:
        try:
            _lib = _build()
            _why = f"in use ({_lib._name})"
        except (OSError, RuntimeError, subprocess.SubprocessError, ValueError) as err:
            _why = f"the C step could not be built ({err})"
    return _lib


def status() -> str:
    """Whether the C step is in use, and why not where it is not (builds it)."""
    if disabled():
        return f"disabled by ADAMP_TORCH_NATIVE={os.environ['ADAMP_TORCH_NATIVE']}"
    library()
    return _why or ""


def warn_unavailable(stacklevel: int = 3) -> None:
    """One warning per process that automatic choice fell back to torch ops because the
    library could not be had (not when it is disabled on purpose)."""
    global _warned
    if _warned or disabled() or library() is not None:
        return
    _warned = True
    warnings.warn(
        f"adamp_torch: {status()}; CPU steps take the torch ops (impl='foreach'), slower. "
        "Set ADAMP_TORCH_NATIVE=0 to choose them without this warning.",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


def reset() -> None:
    """Forgets the library, so that the next step looks again (for tests)."""
    global _lib, _why, _warned
    _lib, _why, _warned = None, None, False


# ----------------------------------------------------------------------------- whole steps

PSEUDO_ROW = 1 << 14  # elements per share of an untested tensor's work
TENSOR_FIELDS = 9  # int64 values per tensor in the table (tensor_t of _native.c)


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


def why_not(
    channel_axis: Any,
    ps: Sequence[Tensor],
    gs: Sequence[Tensor],
    kept: Sequence[Sequence[Tensor | None]],
) -> str | None:
    """The eligibility predicate of ``impl="native"``: None where the C step can take a param
    group (``kept``: per state key, the state tensor of each param, None where it is not
    created yet: it will be laid out as the param), else why not.

    It needs the library (under ``torch.compile``: loaded by an earlier ``library()`` call)
    and, for every param, its grad and its state tensors: plain CPU tensors (not DTensor, not
    meta), params and grads of one float32 or float64 dtype or 16-bit (stepped in float32
    copies), state in the compute dtype (D9), each param tested along dim 0 or untested (D4),
    and grad and state laid out as the param, contiguous or channels_last. Written for speed:
    a small model has hundreds of params, and this runs at every step."""
    if disabled():
        return f"disabled by ADAMP_TORCH_NATIVE={os.environ['ADAMP_TORCH_NATIVE']}"
    compiling = torch.compiler.is_compiling()
    if (_lib if compiling else library()) is None:
        return status() if not compiling else "the C step is not loaded"
    dtype = ps[0].dtype
    state_dtype = _kernel.compute_dtype(dtype)
    strided = torch.strided
    for i, p in enumerate(ps):
        g = gs[i]
        if p.dtype != dtype or g.dtype != dtype:
            return f"parameter {i} or its grad is not {dtype} (one dtype per group)"
        for x in (p, g):
            if not x.is_cpu or x.layout != strided or _kernel.is_dtensor(x):
                kind = "DTensor" if _kernel.is_dtensor(x) else f"{x.device} {x.layout}"
                return f"parameter {i} or its grad is a {kind} tensor (it takes plain CPU tensors)"
            if not compiling and x.is_neg():
                return f"parameter {i} or its grad has the negative bit set"
        ndim = p.dim()
        if ndim >= 2 and channel_axis not in (0, -ndim) and p.numel():
            return f"parameter {i} is tested along channel_axis={channel_axis}, not 0"
        stride = p.stride()
        if g.stride() != stride or not _dense(p):
            return f"parameter {i} or its grad is neither contiguous nor channels_last alike"
        for k in kept:
            s = k[i]
            if s is not None and not (
                s.dtype == state_dtype
                and s.stride() == stride
                and s.is_cpu
                and s.layout == strided
                and not _kernel.is_dtensor(s)
            ):
                return f"a state tensor of parameter {i} is not a {state_dtype} CPU tensor like it"
    return None


_GEOMETRY: dict[tuple, np.ndarray] = {}  # by the shapes of a group: columns 4-7 of its table
_data_ptr = Tensor.data_ptr


def _geometry(params: Sequence[Tensor]) -> np.ndarray:
    """numel, rows, cols and tested (D4) of each param, kept by the group's shapes: a small
    model's step would otherwise spend more time on them in Python than in C."""
    shapes = tuple(p.shape for p in params)
    geo = _GEOMETRY.get(shapes)
    if geo is None:
        geo = np.zeros((len(shapes), 4), dtype=np.int64)
        for i, shape in enumerate(shapes):
            n = math.prod(shape)
            is_tested = len(shape) >= 2 and n > 0
            cols = n // shape[0] if is_tested else PSEUDO_ROW
            geo[i] = n, shape[0] if is_tested else -(-n // cols), cols, is_tested
        if len(_GEOMETRY) >= 64:  # groups of one process: few shapes, unless they change
            _GEOMETRY.clear()
        _GEOMETRY[shapes] = geo
    return geo


def _step_impl(
    params: list[Tensor],
    grads: list[Tensor],
    s1: list[Tensor],
    s2: list[Tensor],
    steps: list[Tensor],
    lr: Tensor | None,
    hyper: list[float],
    sgdp: bool,
) -> Tensor:
    """One step of a param group in C. ``steps``: AdamP's step count t of each param (A1, 0-d
    CPU tensors, after this step's increment; SGDP: none); ``hyper``: lr (unless ``lr`` is
    given as a tensor), beta1, beta2, eps, weight_decay, delta, wd_ratio, momentum, dampening,
    nesterov, project_buffer. Returns the view codes (T,) as int8."""
    n = len(params)
    table = np.empty((n, TENSOR_FIELDS), dtype=np.int64)
    table[:, 0] = list(map(_data_ptr, params))
    table[:, 1] = list(map(_data_ptr, grads))
    table[:, 2] = list(map(_data_ptr, s1))
    table[:, 3] = list(map(_data_ptr, s2)) if s2 else 0
    table[:, 4:8] = _geometry(params)
    if steps:
        # in one read (here, not in the compiled graph, where stacking 300 counts costs a
        # Python call per count)
        counts = torch.stack(steps)
        if counts.shape != (n,) or not counts.is_cpu or not counts.is_floating_point():
            raise ValueError(f"step counts: {n} CPU float scalars, got {counts}")
        table[:, 8] = counts.numpy()  # whole numbers (A1)
    else:
        table[:, 8] = 0
    if lr is not None:
        hyper = [float(lr), *hyper[1:]]
    h = _Hyper(*hyper[:9], int(hyper[9]), int(hyper[10]), DTYPES[params[0].dtype])
    views = torch.empty(n, dtype=torch.int8)
    fn = _lib.sgdp_step if sgdp else _lib.adamp_step
    if fn(table.ctypes.data, n, ctypes.byref(h), views.data_ptr(), torch.get_num_threads()):
        raise MemoryError("adamp_torch: no memory for the step's scratch (nothing was written)")
    # written behind autograd's back: bumped as torch's in-place ops would (one C++ call each),
    # so that a backward through a graph that saved a param before the step raises
    for written in (params, s1, s2):
        increment_version(written)
    return views


# The same function as a PyTorch operator, for torch.compile: Inductor calls it as it is (it
# would not fuse the two passes per tensor any better). Defined with torch.library's low-level
# API rather than torch.library.custom_op, whose Python kernel bumps each mutated tensor's
# version counter one by one (about 1 ms per call for a model of 300 params, four times the
# step itself); _step_impl bumps them itself, one C++ call per list, as the dispatcher's
# fallbacks do not. Eager steps call _step_impl directly, without the dispatcher's conversion
# of the tensor lists.
_LIB = torch.library.Library("adamp_torch", "DEF")
_LIB.define(
    "projected_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] s1, Tensor(c!)[] s2, "
    "Tensor[] steps, Tensor? lr, float[] hyper, bool sgdp) -> Tensor"
)
_LIB.impl("projected_step_", _step_impl, "CPU")
_step_op = torch.ops.adamp_torch.projected_step_.default


@torch.library.register_fake("adamp_torch::projected_step_", lib=_LIB)
def _(params, grads, s1, s2, steps, lr, hyper, sgdp):
    return params[0].new_empty(len(params), dtype=torch.int8)


def _call(group, ps, gs, s1, s2, steps, hyper, sgdp) -> Tensor:
    lr = group["lr"]
    tensor_lr = lr if isinstance(lr, Tensor) else None
    hyper = [0.0 if tensor_lr is not None else float(lr), *map(float, hyper)]
    fn = _step_op if torch.compiler.is_compiling() else _step_impl
    return fn(ps, gs, s1, s2, steps, tensor_lr, hyper, sgdp)


def adamp_step(group, ps, gs, ms, vs, steps) -> Tensor:
    """One AdamP step (A2-A8) of a param group ``why_not`` accepts, ``steps`` already
    counted (A1); returns the view codes (T,)."""
    b1, b2 = group["betas"]
    hyper = (b1, b2, group["eps"], group["weight_decay"], group["delta"], group["wd_ratio"],
             0.0, 0.0, group["nesterov"], False)  # fmt: skip
    return _call(group, ps, gs, ms, vs, steps, hyper, False)


def sgdp_step(group, ps, gs, bufs) -> Tensor:
    """One SGDP step (S1-S6) of a param group ``why_not`` accepts; returns the views."""
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
    return _call(group, ps, gs, bufs, [], [], hyper, True)
