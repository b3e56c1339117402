"""adamp_torch against the NumPy reference and the official package, every branch.

Expected values: ``adamp_core.testing.reference_trajectory`` (the reference) and PyPI ``adamp``
0.3.0 (the official implementation), run on the same gradients. Gradients come from
``branch_gradient`` so that each view of the projection is reached on purpose; the test also
checks that the view adamp_torch reports is the reference's decision at every step.
"""

from __future__ import annotations

import pathlib
import zlib

import adamp
import numpy as np
import pytest
import torch

from adamp_core import decide
from adamp_core.testing import BRANCHES, branch_gradient, reference_trajectory, rel_err
from tests.torch.helpers import REF_STATE, REL_TOL, STATE_KEYS, make, run

STEPS = 5
SHAPES = [(6, 4), (3, 3, 2, 5), (8, 3, 3, 3), (1, 7), (5,), ()]
HYPER = {
    "adamp": [
        dict(lr=1e-2),
        dict(lr=3e-2, betas=(0.8, 0.99), weight_decay=0.1, nesterov=True, wd_ratio=0.5),
        dict(lr=1e-2, eps=1e-6, delta=0.3, weight_decay=1e-2),
    ],
    "sgdp": [
        dict(lr=0.1),
        dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
        dict(lr=0.1, momentum=0.8, dampening=0.3, weight_decay=1e-2, project_buffer=True),
        dict(lr=0.1, momentum=0.9, weight_decay=1e-2, delta=0.2, wd_ratio=0.3),
    ],
}
CASES = [(name, i) for name, hps in HYPER.items() for i in range(len(hps))]
VIEW_NAME = {0: None, 1: "channel", 2: "layer"}


def _grads(shape, branch: str, seed: int, p0: np.ndarray, axis: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if len(shape) < 2:
        return [rng.standard_normal(shape) for _ in range(STEPS)]
    # the gradient stays in the chosen relation to the *initial* weight; the weight moves a
    # little, so later steps may leave the branch: the view check below follows the reference
    return [branch_gradient(p0, rng, branch, channel_axis=axis) for _ in range(STEPS)]


def _seed(*key) -> int:
    return zlib.crc32(repr(key).encode())


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name,case", CASES)
def test_float64_equals_reference(step_path, name, case, shape, branch):
    """Both implementations (the C step and the torch ops) against the reference."""
    hp = HYPER[name][case]
    rng = np.random.default_rng(_seed(name, case, shape, branch))
    p0 = rng.standard_normal(shape)
    grads = _grads(shape, branch, _seed(shape, branch), p0)
    ref = reference_trajectory(name, p0, grads, **hp)
    ours = run(name, torch.tensor(p0), [torch.tensor(g) for g in grads], impl=step_path, **hp)
    p_prev = p0
    for t, ((rp, rs), (op, ost, view), g) in enumerate(zip(ref, ours, grads, strict=True)):
        expect = decide(p_prev, g, delta=hp.get("delta", 0.1), eps=hp.get("eps", 1e-8)).view
        assert VIEW_NAME[view] == expect, f"step {t + 1}: view {view}, reference {expect}"
        assert rel_err(op, rp) <= REL_TOL[torch.float64], f"param differs at step {t + 1}"
        for key in STATE_KEYS[name]:
            err = rel_err(ost[key], getattr(rs, REF_STATE[key]))
            assert err <= REL_TOL[torch.float64], f"state {key} differs at step {t + 1}: {err}"
        p_prev = rp


def test_every_branch_is_reached():
    """The parity table above reaches all three outcomes (else it could pass vacuously)."""
    seen = set()
    for shape in SHAPES[:4]:
        for branch in BRANCHES:
            p0 = np.random.default_rng(_seed("adamp", 0, shape, branch)).standard_normal(shape)
            g = _grads(shape, branch, _seed(shape, branch), p0)[0]
            seen.add(decide(p0, g, delta=0.1, eps=1e-8).view)
    assert seen == {"channel", "layer", None}


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("shape", [(6, 4), (8, 3, 3, 3), (4, 5, 2)], ids=str)
@pytest.mark.parametrize("name,case", CASES)
def test_float64_equals_official(step_path, name, case, shape, branch):
    hp = dict(HYPER[name][case])
    official_cls = {"adamp": adamp.AdamP, "sgdp": adamp.SGDP}[name]
    if name == "sgdp":
        hp["project_buffer"] = True  # D6: the official code projects its buffer in place
    official_hp = {k: v for k, v in hp.items() if k != "project_buffer"}
    rng = np.random.default_rng(_seed("official", name, case, shape, branch))
    p0 = torch.tensor(rng.standard_normal(shape))
    grads = [torch.tensor(g) for g in _grads(shape, branch, _seed(shape, branch), p0.numpy())]
    ours = run(name, p0, grads, impl=step_path, **hp)
    q = torch.nn.Parameter(p0.clone())
    off = official_cls([q], **official_hp)
    for t, (g, (op, ost, _)) in enumerate(zip(grads, ours, strict=True)):
        q.grad = g.clone()
        off.step()
        assert rel_err(op, q.detach().numpy()) <= REL_TOL[torch.float64], f"step {t + 1}"
        for key in STATE_KEYS[name]:
            assert rel_err(ost[key], off.state[q][key].numpy()) <= REL_TOL[torch.float64]


def _margin(p, g, hp) -> float:
    m = decide(p, g, delta=hp.get("delta", 0.1), eps=hp.get("eps", 1e-8)).margins
    return min(abs(m.channel), abs(m.layer))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("name,case", CASES)
def test_low_precision_follows_reference(step_path, name, case, branch, dtype):
    """float32 and 16-bit parameters against the reference run on the same dtype (D9).

    Near-ties: a step whose decision margin (from the float64 reference) is within 1e-4 of the
    threshold may legitimately branch differently in float32; the comparison stops there.
    """
    hp = HYPER[name][case]
    shape = (8, 3, 3, 3)
    rng = np.random.default_rng(_seed("low", name, case, branch))
    p0 = torch.tensor(rng.standard_normal(shape)).to(dtype)
    p0_np = p0.to(torch.float64).numpy()
    grads = [torch.tensor(g).to(dtype) for g in _grads(shape, branch, _seed(branch), p0_np)]
    grads_np = [g.to(torch.float64).numpy() for g in grads]
    ref_in = p0.to(torch.float32).numpy() if dtype == torch.float32 else p0_np
    ref = reference_trajectory(name, ref_in, grads_np, **hp)  # float64 truth
    ours = run(name, p0, grads, impl=step_path, **hp)
    p_prev = p0_np
    for t, ((rp, _), (op, _, _), g) in enumerate(zip(ref, ours, grads_np, strict=True)):
        if _margin(p_prev, g, hp) < 1e-4:
            break  # near-tie: float32 may take the other branch
        # the 16-bit result is the float32 computation rounded once, so it is within half an
        # ulp of the float64 truth rounded ... plus the float32 drift of earlier steps
        tol = REL_TOL[dtype] * (t + 1)
        assert rel_err(op, rp) <= tol, f"{dtype} param differs at step {t + 1}"
        p_prev = op


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_channel_axis_moves_with_the_layout(name):
    """Invariant (D3): moving the channel axis and passing channel_axis gives the same result."""
    hp = HYPER[name][1]
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal((6, 3, 2, 2))
    grads = _grads(p0.shape, "channel", 7, p0)
    base = run(name, torch.tensor(p0), [torch.tensor(g) for g in grads], **hp)
    moved = run(
        name,
        torch.tensor(np.moveaxis(p0, 0, 2)),
        [torch.tensor(np.moveaxis(g, 0, 2)) for g in grads],
        channel_axis=2,
        **hp,
    )
    assert base[0][2] == 1  # the channel view fired on the first step
    for (bp, _, bv), (mp, _, mv) in zip(base, moved, strict=True):
        assert bv == mv
        assert rel_err(np.moveaxis(mp, 2, 0), bp) <= REL_TOL[torch.float64]


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
def test_channels_last_and_strided_params(step_path, name):
    """Non-contiguous parameters (channels_last, a transposed view) step like contiguous ones;
    the official package raises on them (``view`` of a non-contiguous tensor). The C step
    takes channels_last tensors (each row is still a block of memory); asked for the transposed
    one it raises, and automatic choice steps it with torch ops."""
    hp = HYPER[name][1]
    rng = np.random.default_rng(11)
    p0 = rng.standard_normal((6, 4, 3, 3))
    grads = [torch.tensor(g) for g in _grads(p0.shape, "channel", 11, p0)]
    base = run(name, torch.tensor(p0), grads, **hp)

    p = torch.nn.Parameter(torch.tensor(p0).to(memory_format=torch.channels_last))
    opt = make(name, [p], impl=step_path, **hp)
    for g, (bp, _, _) in zip(grads, base, strict=True):
        p.grad = g.to(memory_format=torch.channels_last)
        opt.step()
        assert p.is_contiguous(memory_format=torch.channels_last)
        assert rel_err(p.detach().numpy(), bp) <= REL_TOL[torch.float64]

    q = torch.nn.Parameter(torch.tensor(p0).flatten(1).t().contiguous().t().view(6, 36))
    assert not q.is_contiguous()
    ref = reference_trajectory(
        name, q.detach().numpy().copy(), [g.view(6, 36).numpy() for g in grads], **hp
    )
    if step_path == "native":
        q.grad = grads[0].reshape(6, 36).clone()
        with pytest.raises(
            ValueError, match=r"impl='native'.*neither contiguous nor channels_last"
        ):
            make(name, [q], impl="native", **hp).step()
    opt = make(name, [q], impl=None if step_path == "native" else step_path, **hp)
    for g, (rp, _) in zip(grads, ref, strict=True):
        q.grad = g.reshape(6, 36).clone()
        opt.step()
        assert rel_err(q.detach().numpy(), rp) <= REL_TOL[torch.float64]


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("name,case", CASES)
def test_small_buckets_change_nothing(name, case, branch, monkeypatch):
    """With a tiny CPU bucket size, every tensor has a bucket of its own in the torch ops, and
    with the default size all share one; results equal the reference either way."""
    import adamp_torch._kernel

    monkeypatch.setattr(adamp_torch._kernel, "CPU_BUCKET_NUMEL", 16)
    assert len(adamp_torch._kernel.buckets([torch.ones(3, 7), torch.ones(4)])) == 2
    hp = HYPER[name][case]
    rng = np.random.default_rng(_seed("buckets", name, case, branch))
    shapes = [(9, 3, 2, 2), (4,), (3, 5), (7, 4)]
    p0 = [rng.standard_normal(s) for s in shapes]
    grads = [_grads(s, branch, _seed(s, branch), p) for s, p in zip(shapes, p0, strict=True)]
    ps = [torch.nn.Parameter(torch.tensor(p)) for p in p0]
    opt = make(name, ps, impl="foreach", **hp)
    for t in range(STEPS):
        for p, g in zip(ps, grads, strict=True):
            p.grad = torch.tensor(g[t])
        opt.step()
    for p, p_init, g in zip(ps, p0, grads, strict=True):
        ref = reference_trajectory(name, p_init, g, **hp)
        assert rel_err(p.detach().numpy(), ref[-1][0]) <= REL_TOL[torch.float64]


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("name,case", CASES)
def test_paths_agree_in_float32(name, case, branch):
    """The C step and the torch ops differ only in rounding in float32 (a few ulps per step),
    and take the same decisions."""
    from adamp_torch import _native

    if _native.library() is None:
        pytest.skip(_native.status())
    rng = np.random.default_rng(_seed("paths32", name, case, branch))
    p0 = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    grads = [np.float32(g) for g in _grads(p0.shape, branch, _seed("g32", branch), p0)]
    hp = HYPER[name][case]
    c = run(name, torch.tensor(p0), [torch.tensor(g) for g in grads], impl="native", **hp)
    ops = run(name, torch.tensor(p0), [torch.tensor(g) for g in grads], impl="foreach", **hp)
    for (cp, cst, cv), (op, ost, ov) in zip(c, ops, strict=True):
        assert cv == ov
        assert rel_err(cp, op) <= 1e-6
        for key in STATE_KEYS[name]:
            assert rel_err(cst[key], ost[key]) <= 1e-6


@pytest.mark.parametrize("name,case", CASES)
def test_compiled_step_equals_reference(step_path, name, case):
    """torch.compile(opt.step, fullgraph=True) follows the reference in float64, on a group
    mixing the three outcomes of the projection, a 1-D and a 0-d parameter (0-d float64
    tensors lost in-place updates under Inductor). The native step is traced as the operator
    adamp_torch::projected_step_; the torch ops as themselves (SGDP's sums as plain
    expressions, ``squared_row_sums``)."""
    torch._dynamo.reset()
    hp = HYPER[name][case]
    shapes = [(6, 4), (3, 3, 2, 5), (8, 3, 3, 3), (5,), ()]
    rng = np.random.default_rng(_seed("compiled", name, case))
    p0 = [rng.standard_normal(s) for s in shapes]
    branches = [BRANCHES[i % len(BRANCHES)] for i in range(len(shapes))]
    grads = [
        _grads(s, b, _seed("compiled", s, b), p)
        for s, b, p in zip(shapes, branches, p0, strict=True)
    ]
    ps = [torch.nn.Parameter(torch.tensor(p)) for p in p0]
    opt = make(name, ps, impl=step_path, **hp)
    step = torch.compile(opt.step, fullgraph=True)
    refs = [reference_trajectory(name, p, g, **hp) for p, g in zip(p0, grads, strict=True)]
    for t in range(STEPS):
        for p, g in zip(ps, grads, strict=True):
            p.grad = torch.tensor(g[t])
        step()
        for i, (p, ref) in enumerate(zip(ps, refs, strict=True)):
            rp, rs = ref[t]
            assert rel_err(p.detach().numpy(), rp) <= REL_TOL[torch.float64], (t + 1, shapes[i])
            for key in STATE_KEYS[name]:
                err = rel_err(opt.state[p][key].numpy(), getattr(rs, REF_STATE[key]))
                assert err <= REL_TOL[torch.float64], (t + 1, shapes[i], key)


SGDP_PATH_CASES = HYPER["sgdp"] + [dict(lr=0.1, momentum=0.8, dampening=0.3, weight_decay=1e-2)]


@pytest.mark.parametrize("branch", BRANCHES)
@pytest.mark.parametrize("hp", SGDP_PATH_CASES, ids=str)
def test_sgdp_paths_equal_reference(step_path, hp, branch):
    """SGDP's C step and torch ops follow the reference in float64 (params and buffer), with
    momentum or without, dampening, Nesterov and the projected buffer (D6)."""
    rng = np.random.default_rng(_seed("sgdp-paths", repr(hp), branch))
    p0 = rng.standard_normal((8, 3, 3, 3))
    grads = _grads(p0.shape, branch, _seed("sgdp-paths-g", repr(hp), branch), p0)
    ref = reference_trajectory("sgdp", p0, grads, **hp)
    ours = run("sgdp", torch.tensor(p0), [torch.tensor(g) for g in grads], impl=step_path, **hp)
    for t, ((rp, rs), (op, ost, _)) in enumerate(zip(ref, ours, strict=True)):
        assert rel_err(op, rp) <= REL_TOL[torch.float64], f"param differs at step {t + 1}"
        assert rel_err(ost["momentum"], rs.momentum_buffer) <= REL_TOL[torch.float64]


# ----------------------------------------------------------------------------- the table

DOCS = pathlib.Path(__file__).parents[2] / "docs" / "torch.md"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}  # fmt: skip


def implementation_table() -> list[tuple[str, str, str, str, str]]:
    """The cells (impl, mode, device, dtype, layout) of docs/torch.md's implementation table."""
    lines = DOCS.read_text().split("<!-- implementation table")[1].splitlines()[3:]
    cells = []
    for line in lines:
        if not line.startswith("|"):
            break
        impl, mode, devices, dtypes, layouts = (c.strip() for c in line.strip("|").split("|"))
        for device in devices.split(", "):
            for dtype in dtypes.split(", "):
                for layout in layouts.split(", "):
                    cells.append((impl.strip('`"'), mode, device, dtype, layout))
    return cells


TABLE = implementation_table()


def _laid_out(x: np.ndarray, layout: str, dtype: torch.dtype, device: str) -> torch.Tensor:
    t = torch.tensor(x).to(device=device, dtype=dtype)
    if t.dim() != 4:
        return t
    if layout == "channels_last":
        return t.to(memory_format=torch.channels_last)
    if layout == "strided":  # reversed strides: neither contiguous nor channels_last
        return t.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    return t


def _cell_params(cell):
    """A table cell as pytest params; compiled cells but bfloat16 ones are slow, CUDA cells need
    a device, DTensor cells run in test_distributed.py."""
    _, mode, device, dtype, layout = cell
    marks = []
    if mode == "compiled" and dtype != "bfloat16":
        marks.append(pytest.mark.slow)
    if device == "cuda":
        marks.append(pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))
    if layout == "dtensor":
        marks.append(pytest.mark.skip(reason="DTensor cells: tests/torch/test_distributed.py"))
    return pytest.param(*cell, id="-".join(cell), marks=marks)


def test_the_table_is_read():
    assert len(TABLE) == 2 * 8 + 2 * 2 * 4 * 4  # what the page lists today
    assert ("native", "eager", "cpu", "float32", "channels_last") in TABLE
    assert ("foreach", "compiled", "cuda", "bfloat16", "strided") in TABLE


@pytest.mark.parametrize("name", ["adamp", "sgdp"])
@pytest.mark.parametrize("impl,mode,device,dtype,layout", [_cell_params(c) for c in TABLE])
def test_every_cell_of_the_implementation_table(impl, mode, device, dtype, layout, name):
    """Each cell steps a group (a tested 4-D weight in the cell's layout, a 1-D one) under
    ``impl=`` and follows the reference computed in the cell's compute dtype; the native step
    is named, so a cell it cannot take would raise."""
    if impl == "native" and _native_missing():
        pytest.skip("the C library is not built here")
    torch_dtype = DTYPES[dtype]
    hp = HYPER[name][1]
    rng = np.random.default_rng(_seed("table", impl, mode, device, dtype, layout, name))
    p0 = [rng.standard_normal((8, 3, 3, 3)), rng.standard_normal(8)]
    grads = [
        [branch_gradient(p0[0], rng, BRANCHES[t % 3]), rng.standard_normal(8)] for t in range(3)
    ]
    ps = [torch.nn.Parameter(_laid_out(p, layout, torch_dtype, device)) for p in p0]
    as_np = [p.detach().to(torch.float64).cpu().numpy().copy() for p in ps]  # in the dtype
    gs = [[_laid_out(g, layout, torch_dtype, device) for g in gt] for gt in grads]
    gs_np = [[g.to(torch.float64).cpu().numpy() for g in gt] for gt in gs]
    if torch_dtype == torch.float32:  # the reference computes in float32 for float32 input
        as_np = [a.astype(np.float32) for a in as_np]
    opt = make(name, ps, impl=impl, **hp)
    step = opt.step
    if mode == "compiled":
        torch._dynamo.reset()
        step = torch.compile(opt.step, fullgraph=True)
    for gt in gs:
        for p, g in zip(ps, gt, strict=True):
            p.grad = g.clone()
        step()
        assert ps[0].stride() == gs[0][0].stride()  # the layout is kept
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(torch_dtype, 3 * REL_TOL[torch_dtype])
    for i, (p, a) in enumerate(zip(ps, as_np, strict=True)):
        ref = reference_trajectory(name, a, [gt[i] for gt in gs_np], **hp)[-1][0]
        assert rel_err(p.detach().to(torch.float64).cpu().numpy(), ref) <= tol, i


def _native_missing() -> bool:
    from adamp_torch import _native

    return _native.library() is None


def test_native_refuses_what_the_table_leaves_out():
    """Cells outside the table: the native step raises naming the reason (the automatic
    choice steps them with torch ops, as the cells above show)."""
    if _native_missing():
        pytest.skip("the C library is not built here")
    x = np.random.default_rng(0).standard_normal((8, 3, 3, 3))
    for t, why in [
        (_laid_out(x, "strided", torch.float64, "cpu"), "neither contiguous"),
        (torch.tensor(x, device="meta"), "meta"),
    ]:
        p = torch.nn.Parameter(t)
        p.grad = torch.ones_like(t)
        with pytest.raises(ValueError, match=why):
            make("adamp", [p], impl="native").step()
