"""The row sums of the projection (P1) in one pass over each input, in C (``_rows.c``).

PyTorch reduces one tensor at a time: ``<g,p>`` in torch ops writes ``g * p`` out and reads it
back, about three times the time of ``|g|``. The C function reads ``p``, ``g`` and ``u`` once
for all four sums of every row: on ResNet-50 shapes with 2 threads, 4-7 ms per step against
13 ms for the torch ops (docs/benchmarks.md).

It is compiled on first use with the system's C compiler (``$CC``, else ``cc``) into a cache
folder (``$ADAMP_TORCH_CACHE``, else ``$XDG_CACHE_HOME/adamp_torch``, else
``~/.cache/adamp_torch``), keyed by a hash of the source and the command, and loaded with
ctypes. Without a compiler, on a failed build, or with ``ADAMP_TORCH_NATIVE=0``, the torch ops
are used; ``status()`` says which and why. Nothing here runs at import.
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

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("_rows.c")
FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp"]
DTYPES = {torch.float32: 0, torch.float64: 1}

_lib: ctypes.CDLL | None = None
_why: str | None = None  # None: not tried yet


def _cache_dir() -> Path:
    if os.environ.get("ADAMP_TORCH_CACHE"):
        return Path(os.environ["ADAMP_TORCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adamp_torch"


def _build() -> ctypes.CDLL:
    """Compiles ``_rows.c`` unless a library from the same source and command is cached."""
    cc = shlex.split(os.environ.get("CC", "cc"))
    tag = hashlib.sha256(
        SOURCE.read_bytes() + repr((cc, FLAGS, platform.machine(), sys.platform)).encode()
    ).hexdigest()[:16]
    folder = _cache_dir()
    lib = folder / f"rows-{tag}.so"
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
    out.adamp_row_sums.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int]
    out.adamp_row_sums.restype = ctypes.c_int
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
                _why = f"torch ops in use: the C row sums could not be built ({err})"
    return _lib


def status() -> str:
    """Whether the C row sums are in use, and why not where they are not (builds them)."""
    library()
    return _why or ""


def reset() -> None:
    """Forgets the library, so that the next step looks again (for tests)."""
    global _lib, _why
    _lib, _why = None, None


def takes(p: Tensor, g: Tensor, u: Tensor, out: Tensor, axis: int) -> bool:
    """Whether the C function can take this tensor: CPU, rows on dim 0, contiguous inputs of
    the output's dtype (float32 or float64), outside ``torch.compile``."""
    return (
        axis == 0
        and p.device.type == "cpu"
        and out.dtype in DTYPES
        and p.dtype == g.dtype == u.dtype == out.dtype
        and p.is_contiguous()
        and g.is_contiguous()
        and u.is_contiguous()
        and p.numel() > 0
    )


def row_sums(
    outs: Sequence[Tensor], ps: Sequence[Tensor], gs: Sequence[Tensor], us: Sequence[Tensor]
) -> None:
    """Writes ``<g,p>``, ``|g|``, ``|p|``, ``<p,u>`` of each row (dim 0) of every tensor into
    its ``out`` (4, rows), a view with unit stride along the rows. Every tensor passes
    ``takes``, with one dtype; ``library()`` is not None."""
    jobs = []
    for out, p, g, u in zip(outs, ps, gs, us, strict=True):
        rows = p.shape[0]
        if out.shape != (4, rows) or (rows > 1 and out.stride(1) != 1):
            raise ValueError(f"row_sums: out of shape {tuple(out.shape)} for {rows} rows")
        jobs += [p.data_ptr(), g.data_ptr(), u.data_ptr(), out.data_ptr()]
        jobs += [rows, p.numel() // rows, out.stride(0)]
    if not jobs:
        return
    table = (ctypes.c_int64 * len(jobs))(*jobs)
    f64 = DTYPES[outs[0].dtype]
    _lib.adamp_row_sums(table, len(outs), f64, torch.get_num_threads())
