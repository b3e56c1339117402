"""The row sums (P1) in C, ``adamp_torch._native``: the same sums as torch ops, one per row
whatever the thread count, taken only where they apply, and a clean fall-back to torch ops.

Expected values: the torch-ops implementation ``_kernel._row_sums`` (products summed with
``torch.sum``, norms with ``torch.linalg.vector_norm``) on the same tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from adamp_torch import _kernel, _native

from adamp_core.testing import rel_err

SHAPES = [(1, 1), (7, 1), (3, 5), (64, 3, 7, 7), (300, 130), (2048, 512)]


def _need_c() -> None:
    if _native.library() is None:
        pytest.skip(_native.status())


def test_c_row_sums_are_built_here():
    """CI's machines have a C compiler: there, anything but "in use" is a regression (the
    variable ADAMP_TORCH_NATIVE=0 is the one way to turn them off)."""
    if os.environ.get("ADAMP_TORCH_NATIVE") == "0":
        pytest.skip("disabled by ADAMP_TORCH_NATIVE=0")
    assert _native.status().startswith("in use"), _native.status()


def _torch_sums(p, g, u) -> torch.Tensor:
    out = torch.empty(4, p.shape[0], dtype=p.dtype)
    _kernel._row_sums(out, p, g, u, 0, torch.empty_like(p))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_c_row_sums_equal_torch_ops(dtype):
    """All shapes in one call, their outputs interleaved in one (4, R + 1) buffer as the
    layout's: float64 to 1e-12, float32 to float32 rounding of a sum (1e-5 measured worst
    about 2e-6, the torch side summing in float32 and the C side in float64)."""
    _need_c()
    gen = torch.Generator().manual_seed(0)
    ps, gs, us = ([torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES] for _ in range(3))
    total = sum(s[0] for s in SHAPES)
    stats = torch.full((4, total + 1), float("nan"), dtype=dtype)
    outs, lo = [], 0
    for s in SHAPES:
        outs.append(stats[:, lo : lo + s[0]])
        lo += s[0]
    _native.row_sums(outs, ps, gs, us)
    assert torch.isnan(stats[:, -1]).all()  # nothing written past the rows
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for out, p, g, u in zip(outs, ps, gs, us, strict=True):
        expect = _torch_sums(p, g, u)
        for k in range(4):  # per sum: <g,p> and <p,u> are near 0 relative to the norms
            assert rel_err(out[k].numpy(), expect[k].numpy()) <= tol, (tuple(p.shape), k)


def test_thread_count_changes_nothing():
    """Each row is summed by one thread in one order: 1, 2 and 3 threads agree bit for bit."""
    _need_c()
    gen = torch.Generator().manual_seed(1)
    ps, gs, us = ([torch.randn(s, generator=gen) for s in SHAPES] for _ in range(3))
    outs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            out = [torch.empty(4, p.shape[0]) for p in ps]
            _native.row_sums(out, ps, gs, us)
            outs.append(torch.cat(out, dim=1))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_takes_only_what_it_can():
    p = torch.randn(4, 3, 2, 2)
    out = torch.empty(4, 4)
    assert _native.takes(p, p, p, out, 0)
    assert not _native.takes(p, p, p, out, 1)  # rows on another axis
    cl = p.to(memory_format=torch.channels_last)
    assert not _native.takes(cl, p, p, out, 0)
    assert not _native.takes(p, p.half(), p, out, 0)
    assert not _native.takes(p.double(), p.double(), p.double(), out, 0)  # out's dtype differs
    e = torch.empty(0, 3)
    assert not _native.takes(e, e, e, torch.empty(4, 0), 0)


def test_bad_output_is_refused():
    _need_c()
    p = torch.randn(5, 3)
    with pytest.raises(ValueError, match="out of shape"):
        _native.row_sums([torch.empty(4, 4)], [p], [p], [p])
    with pytest.raises(ValueError, match="out of shape"):
        _native.row_sums([torch.empty(5, 4).t()], [p], [p], [p])


def test_mixed_bucket_takes_both_paths(monkeypatch):
    """A contiguous tensor goes to C, a channels_last one to torch ops, in one bucket; the
    step equals the all-torch-ops step in float64."""
    _need_c()
    from tests.torch.helpers import make

    taken = []
    sums = _native.row_sums
    monkeypatch.setattr(_native, "row_sums", lambda *a: taken.append(len(a[0])) or sums(*a))
    rng = np.random.default_rng(3)
    p0 = [rng.standard_normal((6, 4, 3, 3)), rng.standard_normal((5, 4, 3, 3))]
    results = []
    for use_c in (True, False):
        if not use_c:
            monkeypatch.setattr(_native, "library", lambda: None)
        ps = [torch.nn.Parameter(torch.tensor(p0[0]))]
        ps.append(torch.nn.Parameter(torch.tensor(p0[1]).to(memory_format=torch.channels_last)))
        opt = make("adamp", ps, lr=0.1, weight_decay=0.1)
        for t in range(3):
            for i, p in enumerate(ps):
                p.grad = torch.tensor(np.random.default_rng([t, i]).standard_normal(p.shape))
            opt.step()
        results.append([p.detach().clone() for p in ps])
    assert taken == [1, 1, 1]  # one tensor of the bucket in C, each step
    for a, b in zip(*results, strict=True):
        assert rel_err(a.numpy(), b.numpy()) <= 1e-12


def test_without_a_compiler_the_torch_ops_step(tmp_path):
    """With no compiler to be had, status() says why and steps run on torch ops."""
    code = (
        "import torch\n"
        "from adamp_torch import AdamP, _native\n"
        "p = torch.nn.Parameter(torch.randn(4, 3))\n"
        "opt = AdamP([p], lr=0.1)\n"
        "p.grad = torch.randn(4, 3)\n"
        "opt.step()\n"
        "assert _native.library() is None\n"
        "print(_native.status())\n"
    )
    env = dict(os.environ, CC="no-such-compiler-here", ADAMP_TORCH_CACHE=str(tmp_path))
    env.pop("ADAMP_TORCH_NATIVE", None)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "could not be built" in done.stdout and "no-such-compiler-here" in done.stdout
    assert not list(tmp_path.iterdir())  # no half-written library left behind


def test_disabled_by_the_environment(tmp_path):
    code = "from adamp_torch import _native\nprint(_native.status())\n"
    env = dict(os.environ, ADAMP_TORCH_NATIVE="0", ADAMP_TORCH_CACHE=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.stdout.strip() == "disabled by ADAMP_TORCH_NATIVE=0", done.stderr
