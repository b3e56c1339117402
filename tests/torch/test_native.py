"""The C step (``adamp_torch._native``): where it applies, that its result does not depend on
the thread count, how it meets NaN and empty tensors, and the fall-back to torch ops.

Its agreement with the reference and with the torch ops is tested in test_parity.py (every
test with the ``step_path`` fixture), and through the conformance suite.
Expected values here: the torch-ops step on the same inputs, or the reference.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from adamp_torch import _native

from adamp_core.testing import rel_err
from tests.torch.helpers import make


def _need_c() -> None:
    if _native.library() is None:
        pytest.skip(_native.status())


def test_c_step_is_built_here():
    """Where a C compiler is found (CI's machines have gcc), anything but "in use" is a
    regression; ADAMP_TORCH_NATIVE=0 is the one way to turn the C step off."""
    if os.environ.get("ADAMP_TORCH_NATIVE") == "0":
        pytest.skip("disabled by ADAMP_TORCH_NATIVE=0")
    if shutil.which(shlex.split(os.environ.get("CC", "cc"))[0]) is None:
        pytest.skip("no C compiler on PATH: steps take the torch ops")
    assert _native.status().startswith("in use"), _native.status()


def _applies(ps, gs=None, kept=(), axis=0):
    gs = [torch.zeros_like(p) for p in ps] if gs is None else gs
    return _native.step_applies(axis, ps, gs, list(kept))


def test_where_it_applies():
    _need_c()
    w, b, s = torch.randn(4, 3, 2, 2), torch.randn(4), torch.randn(())
    state = [[torch.zeros_like(x) for x in (w, b, s)]]
    assert _applies([w, b, s], kept=state) == [True, False, False]  # D4: 1-D, 0-d untested
    assert _applies([torch.randn(0, 3)]) == [False]  # zero-size: untested (D4)
    cl = w.to(memory_format=torch.channels_last)
    assert _applies([cl], kept=[[torch.zeros_like(cl)]]) == [True]  # grads/state keep it
    half = w.half()
    assert _applies([half], kept=[[torch.zeros_like(w)]]) == [True]  # float32 state (D9)
    assert _applies([w], axis=1) is None  # rows on another axis
    assert _applies([w], axis=-1) is None
    assert _applies([b], axis=-1) == [False]  # axis of an untested tensor does not matter
    assert _applies([w.transpose(0, 1)]) is None  # rows are not blocks of memory
    assert _applies([cl], gs=[torch.zeros_like(w)]) is None  # grad laid out otherwise
    assert _applies([w], kept=[[torch.zeros_like(cl)]]) is None  # state laid out otherwise
    assert _applies([w, w.double()]) is None  # one dtype per call
    assert _applies([w], kept=[[torch.zeros_like(w, dtype=torch.float64)]]) is None
    assert _applies([w.to(torch.int32)]) is None


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_thread_count_changes_nothing(name):
    """Each row is summed by one thread, in one order: 1, 2 and 3 threads agree bit for bit."""
    _need_c()
    rng = np.random.default_rng(1)
    shapes = [(64, 3, 7, 7), (300, 130), (1000,), (5, 2)]
    p0 = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]
    grads = [[torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]] * 3
    out = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            ps = [torch.nn.Parameter(p.clone()) for p in p0]
            opt = make(name, ps, lr=0.1, weight_decay=0.1)
            for gs in grads:
                for p, g in zip(ps, gs, strict=True):
                    p.grad = g.clone()
                opt.step()
            out.append(torch.cat([p.detach().flatten() for p in ps]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def _two_ways(name, p0, grads, monkeypatch, **hp):
    """The params and views after stepping through ``grads`` with the C step, then with torch
    ops."""
    results = []
    for use_c in (True, False):
        if not use_c:
            monkeypatch.setattr(_native, "_lib", None)
        ps = [torch.nn.Parameter(torch.tensor(p)) for p in p0]
        opt = make(name, ps, **hp)
        opt.track_views = True
        views = []
        for gs in grads:
            for p, g in zip(ps, gs, strict=True):
                p.grad = torch.tensor(g)
            opt.step()
            views.append([int(opt.last_views[p]) for p in ps])
        results.append(([p.detach().numpy() for p in ps], views))
    return results


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_nan_and_inf_as_the_torch_ops(name, monkeypatch):
    """A NaN or an infinite gradient entry gives the same NaN pattern and the same views in
    both implementations (a NaN row is never below the threshold, D1)."""
    _need_c()
    rng = np.random.default_rng(2)
    p0 = [rng.standard_normal((6, 5)), rng.standard_normal((4, 3)), rng.standard_normal(7)]
    g = [rng.standard_normal(p.shape) for p in p0]
    g[0][2, 1] = np.nan
    g[1][0, 0] = np.inf
    g[2][3] = np.nan
    (cp, cv), (tp, tv) = _two_ways(name, p0, [g, g], monkeypatch, lr=0.1, weight_decay=0.1)
    assert cv == tv
    for a, b in zip(cp, tp, strict=True):
        assert np.array_equal(np.isnan(a), np.isnan(b))
        finite = np.isfinite(a)
        assert rel_err(a[finite], b[finite]) <= 1e-12


def test_tensor_learning_rate(monkeypatch):
    """A tensor lr (schedulers, capturable-style code) is read as its value."""
    _need_c()
    rng = np.random.default_rng(4)
    p0, g = [rng.standard_normal((8, 3, 3, 3))], [[rng.standard_normal((8, 3, 3, 3))]]
    for name in ("adamp", "sgdp"):
        lr = torch.tensor(0.05, dtype=torch.float64)
        a = _two_ways(name, p0, g, monkeypatch, lr=lr)[0][0][0]
        monkeypatch.undo()
        b = _two_ways(name, p0, g, monkeypatch, lr=0.05)[0][0][0]
        monkeypatch.undo()
        assert rel_err(a, b) == 0


def test_group_with_an_unfit_tensor_takes_torch_ops(monkeypatch):
    """One transposed parameter sends its whole group to the torch ops; the result equals the
    C step's on the same values laid out contiguously."""
    _need_c()
    calls = []
    impl = _native._step_impl
    monkeypatch.setattr(_native, "_step_impl", lambda *a: calls.append(1) or impl(*a))
    rng = np.random.default_rng(3)
    w, v = rng.standard_normal((6, 4)), rng.standard_normal((5, 3))
    gw, gv = rng.standard_normal((6, 4)), rng.standard_normal((5, 3))
    out = []
    for transposed in (False, True):
        pv = torch.tensor(v).t().contiguous().t() if transposed else torch.tensor(v)
        ps = [torch.nn.Parameter(torch.tensor(w)), torch.nn.Parameter(pv)]
        opt = make("adamp", ps, lr=0.1)
        for _ in range(3):
            ps[0].grad, ps[1].grad = torch.tensor(gw), torch.tensor(gv)
            opt.step()
        out.append([p.detach().numpy().copy() for p in ps])
    assert calls == [1, 1, 1]  # the contiguous run only
    for a, b in zip(*out, strict=True):
        assert rel_err(a, b) <= 1e-12


def test_without_a_compiler_the_torch_ops_step(tmp_path):
    """With no compiler to be had, status() says why, steps run on torch ops, and no file is
    left in the cache folder."""
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
    assert not list(tmp_path.iterdir())


def test_a_failing_compiler_is_reported(tmp_path):
    code = "from adamp_torch import _native\nprint(_native.status())\n"
    env = dict(os.environ, CC="false", ADAMP_TORCH_CACHE=str(tmp_path))
    env.pop("ADAMP_TORCH_NATIVE", None)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert "could not be built (false failed" in done.stdout, done.stdout + done.stderr
    assert not list(tmp_path.iterdir())


def test_disabled_by_the_environment(tmp_path):
    code = "from adamp_torch import _native\nprint(_native.status())\n"
    env = dict(os.environ, ADAMP_TORCH_NATIVE="0", ADAMP_TORCH_CACHE=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.stdout.strip() == "disabled by ADAMP_TORCH_NATIVE=0", done.stderr


def test_built_once_and_reused(tmp_path):
    """The first process builds into the cache folder; the next loads the same file."""
    code = "from adamp_torch import _native\nprint(_native.status())\n"
    env = dict(os.environ, ADAMP_TORCH_CACHE=str(tmp_path))
    env.pop("ADAMP_TORCH_NATIVE", None)
    env.pop("CC", None)
    first, second = (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        for _ in range(2)
    )
    assert first.stdout.startswith("in use"), first.stdout + first.stderr
    assert first.stdout == second.stdout
    assert [p.suffix for p in tmp_path.iterdir()] == [".so"]
