"""The native implementation (``impl="native"``, the C step of ``adamp_torch._native``): where it
applies, that its result does not depend on the thread count, how it meets NaN, huge and tiny
values (D10), and how its library is built, verified and loaded.

Its agreement with the reference and with the torch ops is tested in test_parity.py (every
test with the ``step_path`` fixture), and through the conformance suite.
Expected values here: the torch-ops step (``impl="foreach"``) on the same inputs, or the
reference ``adamp_core``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from adamp_torch import SGDP, AdamP, _native

from adamp_core import decide
from adamp_core.testing import reference_trajectory, rel_err
from tests.torch.helpers import make, run


def _need_c() -> None:
    if _native.library() is None:
        pytest.skip(_native.status())


def _have_cc() -> bool:
    return shutil.which(shlex.split(os.environ.get("CC", "cc"))[0]) is not None


def test_c_step_is_built_here():
    """Where a C compiler is found (CI's machines have gcc), anything but "in use" is a
    regression; ADAMP_TORCH_NATIVE=0 (or false/no/off) is the one way to turn it off."""
    if _native.disabled():
        pytest.skip("disabled by ADAMP_TORCH_NATIVE")
    if not _have_cc():
        pytest.skip("no C compiler on PATH: steps take the torch ops")
    assert _native.status().startswith("in use"), _native.status()


def _why_not(ps, gs=None, kept=(), axis=0):
    gs = [torch.zeros_like(p) for p in ps] if gs is None else gs
    return _native.why_not(axis, ps, gs, list(kept))


def test_where_it_applies():
    """Every param, grad and state tensor decides, not the first one's."""
    _need_c()
    w, b, s = torch.randn(4, 3, 2, 2), torch.randn(4), torch.randn(())
    state = [[torch.zeros_like(x) for x in (w, b, s)]]
    assert _why_not([w, b, s], kept=state) is None
    # numel, rows, cols, tested (D4: 1-D, 0-d untested, cut into pseudo-rows to share work)
    cols = _native.PSEUDO_ROW
    geometry = [[48, 4, 12, 1], [4, 1, cols, 0], [1, 1, cols, 0]]
    assert _native._geometry([w, b, s]).tolist() == geometry
    assert _native._geometry([torch.randn(0, 3)]).tolist() == [[0, 0, cols, 0]]  # zero-size
    assert _why_not([w, b], kept=[[None, None]]) is None  # state not made yet: made like p
    cl = w.to(memory_format=torch.channels_last)
    assert _why_not([cl], kept=[[torch.zeros_like(cl)]]) is None  # grads/state keep it
    half = w.half()
    assert _why_not([half], kept=[[torch.zeros_like(w)]]) is None  # float32 state (D9)
    assert "channel_axis=1" in _why_not([w], axis=1)  # rows on another axis
    assert "channel_axis=-1" in _why_not([w], axis=-1)
    assert _why_not([b], axis=-1) is None  # axis of an untested tensor does not matter
    assert "contiguous" in _why_not([w.transpose(0, 1)])  # rows are not blocks of memory
    assert "contiguous" in _why_not([cl], gs=[torch.zeros_like(w)])  # grad laid out otherwise
    assert "state" in _why_not([w], kept=[[torch.zeros_like(cl)]])  # state laid out otherwise
    assert "one dtype" in _why_not([w, w.double()])  # one dtype per call
    assert "state" in _why_not([w], kept=[[torch.zeros_like(w, dtype=torch.float64)]])
    meta = torch.empty(300, 400, device="meta")
    assert "meta" in _why_not([w, meta])  # a later tensor on another device
    assert "meta" in _why_not([w, b], gs=[torch.zeros_like(w), torch.empty(4, device="meta")])
    assert "state" in _why_not([w], kept=[[torch.empty_like(w, device="meta")]])
    assert _why_not([w, torch.zeros_like(w)._neg_view()]) is not None  # negative bit


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_mixed_device_group(name):
    """The repro of a crash (exit 139): a CPU param, then a meta one, in one group. Automatic
    choice steps the group with torch ops (the CPU param as if alone); impl="native" raises
    naming the param, before anything is written."""
    _need_c()

    def group(impl):
        a = torch.nn.Parameter(torch.linspace(-1, 1, 12).view(3, 4))
        b = torch.nn.Parameter(torch.empty(300, 400, device="meta"))
        opt = make(name, [a, b], lr=0.1, impl=impl)
        a.grad, b.grad = torch.linspace(1, 2, 12).view(3, 4), torch.empty(300, 400, device="meta")
        return opt, a

    opt, a = group(None)
    opt.step()
    alone = torch.nn.Parameter(torch.linspace(-1, 1, 12).view(3, 4))
    solo = make(name, [alone], lr=0.1, impl="foreach")
    alone.grad = torch.linspace(1, 2, 12).view(3, 4)
    solo.step()
    assert torch.equal(a.detach(), alone.detach())
    opt, a = group("native")
    with pytest.raises(ValueError, match=r"impl='native'.*group 0.*parameter 1.*meta"):
        opt.step()
    assert torch.equal(a.detach(), torch.linspace(-1, 1, 12).view(3, 4)) and not opt.state[a]


def test_unknown_impl_is_refused():
    p = torch.nn.Parameter(torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"impl must be None \(automatic\) or one of 'native'"):
        AdamP([p], impl="fused")
    opt = SGDP([p], lr=0.1)
    with pytest.raises(ValueError, match="impl must be"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(2))], "impl": "c"})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_thread_count_changes_nothing(name):
    """Each row is summed by one thread, in one order, whether its tensor is cut by rows
    among threads (1200 x 300, 400000) or stepped whole by one (the others): 1, 2 and 3
    threads agree bit for bit (the group has enough elements for 3 threads, 2^18 each)."""
    _need_c()
    rng = np.random.default_rng(1)
    shapes = [(1200, 300), (64, 3, 7, 7), (300, 130), (400000,), (1000,), (5, 2)]
    p0 = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]
    grads = [[torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in shapes]] * 3
    out = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            ps = [torch.nn.Parameter(p.clone()) for p in p0]
            opt = make(name, ps, lr=0.1, weight_decay=0.1, impl="native")
            for gs in grads:
                for p, g in zip(ps, gs, strict=True):
                    p.grad = g.clone()
                opt.step()
            out.append(torch.cat([p.detach().flatten() for p in ps]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def _two_ways(name, p0, grads, **hp):
    """The params and views after stepping through ``grads`` with the native step, then with
    torch ops."""
    results = []
    for impl in ("native", "foreach"):
        ps = [torch.nn.Parameter(torch.tensor(p)) for p in p0]
        opt = make(name, ps, impl=impl, **hp)
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
def test_nan_and_inf_as_the_torch_ops(name):
    """A NaN or an infinite gradient entry gives the same NaN pattern and the same views in
    both implementations (a NaN row is never below the threshold, D1)."""
    _need_c()
    rng = np.random.default_rng(2)
    p0 = [rng.standard_normal((6, 5)), rng.standard_normal((4, 3)), rng.standard_normal(7)]
    g = [rng.standard_normal(p.shape) for p in p0]
    g[0][2, 1] = np.nan
    g[1][0, 0] = np.inf
    g[2][3] = np.nan
    (cp, cv), (tp, tv) = _two_ways(name, p0, [g, g], lr=0.1, weight_decay=0.1)
    assert cv == tv
    for a, b in zip(cp, tp, strict=True):
        assert np.array_equal(np.isnan(a), np.isnan(b))
        finite = np.isfinite(a)
        assert rel_err(a[finite], b[finite]) <= 1e-12


# D10: gradients whose squared norms overflow (1e30: |g|^2 = inf in float32, the cosine is 0
# and the view fires) or underflow (1e-40, subnormal: |g|^2 = 0) in float32; per row, some
# rows only (the channel view then sees one inf row), and 16-bit params after the upcast (D9).
EDGE_CASES = {
    "huge": (1e30, slice(None)),
    "huge-rows": (1e30, slice(0, 2)),
    "tiny": (1e-40, slice(None)),
    "tiny-rows": (1e-40, slice(1, 3)),
}


@pytest.mark.parametrize("case", EDGE_CASES)
@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_float32_edges_decide_as_the_reference(step_path, name, case):
    """Both implementations take the reference's decision in float32 at every step, and end
    within float32 rounding of the reference's trajectory run in float32 arithmetic."""
    scale, rows = EDGE_CASES[case]
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal((6, 4, 3)).astype(np.float32)
    grads = []
    for _ in range(3):
        g = rng.standard_normal(p0.shape)
        g[rows] *= scale
        grads.append(g.astype(np.float32))
    hp = dict(lr=0.1, weight_decay=0.1)
    if name == "sgdp":
        hp["momentum"] = 0.9
    with np.errstate(over="ignore", invalid="ignore"):  # the reference overflows, as it should
        ref = reference_trajectory(name, p0, grads, **hp)  # float32 arithmetic on float32 input
    ours = run(name, torch.tensor(p0), [torch.tensor(g) for g in grads], impl=step_path, **hp)
    p_prev = p0
    views = {0: None, 1: "channel", 2: "layer"}
    for t, ((rp, _), (op, _, view), g) in enumerate(zip(ref, ours, grads, strict=True)):
        with np.errstate(over="ignore", invalid="ignore"):
            expect = decide(p_prev, g, delta=0.1, eps=1e-8).view
        assert views[view] == expect, f"step {t + 1}: view {views[view]}, reference {expect}"
        finite = np.isfinite(rp)
        assert np.array_equal(finite, np.isfinite(op))
        assert rel_err(op[finite], rp[finite]) <= 1e-5, f"step {t + 1}"
        p_prev = rp
    if case == "huge":
        assert views[ours[0][2]] == "channel"  # |g|^2 = inf: cos = 0, fired (D10)


def test_tensor_learning_rate():
    """A tensor lr (schedulers, capturable-style code) is read as its value."""
    _need_c()
    rng = np.random.default_rng(4)
    p0, g = [rng.standard_normal((8, 3, 3, 3))], [[rng.standard_normal((8, 3, 3, 3))]]
    for name in ("adamp", "sgdp"):
        lr = torch.tensor(0.05, dtype=torch.float64)
        a = _two_ways(name, p0, g, lr=lr)[0][0][0]
        b = _two_ways(name, p0, g, lr=0.05)[0][0][0]
        assert rel_err(a, b) == 0


def test_group_with_an_unfit_tensor():
    """One transposed parameter: automatic choice sends its whole group to the torch ops (the
    result equals the native step's on the same values laid out contiguously); asked for the
    native step, the group raises before anything is written."""
    _need_c()
    rng = np.random.default_rng(3)
    w, v = rng.standard_normal((6, 4)), rng.standard_normal((5, 3))
    gw, gv = rng.standard_normal((6, 4)), rng.standard_normal((5, 3))
    out = []
    for transposed in (False, True):
        pv = torch.tensor(v).t().contiguous().t() if transposed else torch.tensor(v)
        ps = [torch.nn.Parameter(torch.tensor(w)), torch.nn.Parameter(pv)]
        opt = make("adamp", ps, lr=0.1, impl="native" if not transposed else None)
        for _ in range(3):
            ps[0].grad, ps[1].grad = torch.tensor(gw), torch.tensor(gv)
            opt.step()
        out.append([p.detach().numpy().copy() for p in ps])
        if transposed:
            asked = make("adamp", ps, lr=0.1, impl="native")
            with pytest.raises(ValueError, match="parameter 1 or its grad is neither"):
                asked.step()
            assert not any(asked.state.values())
    for a, b in zip(*out, strict=True):
        assert rel_err(a, b) <= 1e-12


def test_no_half_step_across_groups():
    """The second group cannot be stepped (its state is float32, its param float64 after
    model.double()): nothing of the first group is written either, no step is counted."""
    a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5, 2))
    opt = AdamP([{"params": [a]}, {"params": [b]}], lr=0.1)
    a.grad, b.grad = torch.randn(4, 3), torch.randn(5, 2)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[a].items()}, a.detach().clone()
    b.data = b.data.double()
    b.grad = torch.randn(5, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"state\['exp_avg'\].*float32.*model.double"):
        opt.step()
    assert torch.equal(a.detach(), before[1])
    assert all(torch.equal(opt.state[a][k], v) for k, v in before[0].items())
    assert int(opt.state[b]["step"]) == 1
    opt.load_state_dict(opt.state_dict())  # converts the state: steps again
    opt.step()
    assert opt.state[b]["exp_avg"].dtype == torch.float64 and int(opt.state[b]["step"]) == 2


# ----------------------------------------------------------------------------- the library

CHILD = """
import warnings, torch
warnings.simplefilter("always")
from adamp_torch import AdamP, _native
p = torch.nn.Parameter(torch.linspace(-1, 1, 12, dtype=torch.float64).view(4, 3))
with warnings.catch_warnings(record=True) as caught:
    opt = AdamP([p], lr=0.1, weight_decay=0.1)
    for _ in range(2):
        p.grad = torch.linspace(2, -1, 12, dtype=torch.float64).view(4, 3)
        opt.step()
print("STATUS", _native.status())
print("WARNINGS", len(caught), " | ".join(str(w.message) for w in caught))
print("RESULT", repr(p.detach().sum().item()))
"""


def _child(cache, code: str = CHILD, **env_vars) -> dict[str, str]:
    env = dict(os.environ, ADAMP_TORCH_CACHE=str(cache), **env_vars)
    for key in ("ADAMP_TORCH_NATIVE", "CC"):
        if key not in env_vars:
            env.pop(key, None)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)


def _expected() -> float:
    p = torch.nn.Parameter(torch.linspace(-1, 1, 12, dtype=torch.float64).view(4, 3))
    opt = AdamP([p], lr=0.1, weight_decay=0.1, impl="foreach")
    for _ in range(2):
        p.grad = torch.linspace(2, -1, 12, dtype=torch.float64).view(4, 3)
        opt.step()
    return p.detach().sum().item()


def _fell_back(out: dict[str, str], why: str) -> None:
    """One warning, saying why; results as the torch ops'."""
    assert out["WARNINGS"].startswith("1 ") and why in out["WARNINGS"], out
    assert "could not be built" in out["STATUS"] and why in out["STATUS"], out
    assert abs(float(out["RESULT"]) - _expected()) <= 1e-12


def _in_use(out: dict[str, str]) -> None:
    assert out["STATUS"].startswith("in use"), out
    assert out["WARNINGS"].startswith("0"), out
    assert abs(float(out["RESULT"]) - _expected()) <= 1e-12


def _files(folder) -> list[str]:
    return sorted(p.suffix for p in folder.iterdir())


@pytest.fixture
def built(tmp_path):
    """A cache folder holding a library built by a first process."""
    if not _have_cc():
        pytest.skip("no C compiler on PATH")
    _in_use(_child(tmp_path))
    assert _files(tmp_path) == [".sha256", ".so"]
    return tmp_path


def _library(folder):
    return next(folder.glob("*.so"))


def test_built_once_and_reused(built):
    lib = _library(built)
    stamp = lib.stat().st_mtime_ns
    _in_use(_child(built))
    assert _library(built).stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["truncated", "empty", "foreign"])
def test_a_damaged_library_is_rebuilt(built, damage):
    """A truncated (once: SIGBUS), empty or foreign library (once: an AttributeError from the
    constructor; planted: its code ran) fails the content check and is rebuilt, not loaded."""
    lib = _library(built)
    if damage == "truncated":
        lib.write_bytes(lib.read_bytes()[:4096])
    elif damage == "empty":
        lib.write_bytes(b"")
    else:  # a valid shared library whose step does nothing
        src = built / "planted.c"
        src.write_text("int adamp_step(void) { return 0; }\nint sgdp_step(void) { return 0; }\n")
        cc = shlex.split(os.environ.get("CC", "cc"))
        subprocess.run([*cc, "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
        src.unlink()
    _in_use(_child(built))
    assert _files(built) == [".sha256", ".so"]


def test_a_foreign_library_with_its_hash_is_not_used(built):
    """Even with a matching hash record (only the folder's owner can write one), a library that
    does not report this build's tag is not used: a warned fall-back."""
    lib = _library(built)
    src = built / "planted.c"
    src.write_text("int adamp_step(void) { return 0; }\nint sgdp_step(void) { return 0; }\n")
    cc = shlex.split(os.environ.get("CC", "cc"))
    subprocess.run([*cc, "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    src.unlink()
    record = lib.with_suffix(".sha256")
    record.write_text(_native._sha256(lib) + "\n")
    _fell_back(_child(built), "is not a build of _native.c")


def test_a_shared_cache_folder_is_refused(built):
    """A group- or world-writable cache folder: another user could plant a library there."""
    built.chmod(0o777)
    try:
        out = _child(built)
    finally:
        built.chmod(0o700)
    _fell_back(out, "writable by group or others (mode 777)")
    lib = _library(built)
    lib.chmod(0o766)  # the library itself writable by others: rebuilt
    _in_use(_child(built))
    assert _library(built).stat().st_mode & 0o022 == 0


@pytest.mark.parametrize(
    "cc,why",
    [("no-such-compiler-here", "no-such-compiler-here"), ("false", "false failed"),
     ("true", "wrote an empty library")],
)  # fmt: skip
def test_without_a_working_compiler_the_torch_ops_step(tmp_path, cc, why):
    """A missing compiler, one that fails, one that writes nothing: a warning (once), the
    torch ops' results, and nothing left in the cache folder."""
    _fell_back(_child(tmp_path, CC=cc), why)
    assert not list(tmp_path.iterdir())


def test_disabled_by_the_environment(tmp_path, monkeypatch):
    """The usual spellings turn the native step off; then automatic choice takes the torch ops
    without a warning (chosen, not a fall-back) and nothing is built."""
    for value in ("0", "false", "No", "OFF", " off "):
        monkeypatch.setenv("ADAMP_TORCH_NATIVE", value)
        assert _native.disabled() and _native.library() is None
    for value in ("", "1", "true", "Yes", "on"):
        monkeypatch.setenv("ADAMP_TORCH_NATIVE", value)
        assert not _native.disabled()
    out = _child(tmp_path, ADAMP_TORCH_NATIVE="off")
    assert out["STATUS"] == "disabled by ADAMP_TORCH_NATIVE=off"
    assert out["WARNINGS"].startswith("0")
    assert abs(float(out["RESULT"]) - _expected()) <= 1e-12
    assert not list(tmp_path.iterdir())


def test_a_bad_switch_value_is_refused(monkeypatch):
    monkeypatch.setenv("ADAMP_TORCH_NATIVE", "maybe")
    with pytest.raises(ValueError, match="ADAMP_TORCH_NATIVE must be one of 0, false, no, off"):
        AdamP([torch.nn.Parameter(torch.randn(2, 2))])


def test_native_asked_where_it_cannot_be_had(tmp_path):
    code = """
    import torch
    from adamp_torch import SGDP
    try:
        SGDP([torch.nn.Parameter(torch.randn(2, 2))], lr=0.1, impl="native")
    except ValueError as err:
        print("ERROR", err)
    """
    out = _child(tmp_path, code, ADAMP_TORCH_NATIVE="off")
    assert out["ERROR"] == "SGDP(impl='native'): disabled by ADAMP_TORCH_NATIVE=off"
