"""Contracts over every driver, beside the trajectory property.

- ``test_edges[OPTIMIZER-EDGE-DTYPE]``: weights and gradients near the dtype's overflow and
  underflow. The decision there is the reference's arithmetic in the compute dtype (D10 in
  docs/algorithm.md): a row sum that overflows is inf, so ``|<g, p>| / inf = 0`` fires the
  view, ``inf / inf`` is NaN and does not. The expected values are the reference's own run in
  the parameters' dtype (``adamp_core`` computes float16/bfloat16 in float32, D9), not the
  float64 trajectory, which would decide otherwise. Values stay well inside the edges (D10's
  near-ties are left out) and are never subnormal (XLA and TensorFlow flush those on CPUs).
- ``test_dtype_contract[OPTIMIZER-DTYPE]``: after a step the parameter has its dtype, and so
  has an update a framework returns (optax).
- ``test_complex_params[OPTIMIZER-DTYPE]``: complex parameters are refused with an error that
  says so, before anything is written, or stepped as AdamP/SGDP on (re, im) pairs; a step that
  leaves the imaginary part alone fails.
- ``test_sparse_rejected[OPTIMIZER]``: where the framework has a sparse gradient type the
  implementation does not take, it raises an error that says so before anything is written.
  (Where it takes one, the ``*-sparse-rows`` trajectory scenarios feed it.)
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest

import adamp_core

from .drivers import Output, Problem, ProblemGroup, SparseRows, numpy_dtype
from .drivers.numpy_driver import NumpyDriver
from .harness import ulp
from .tolerances import TOLERANCES

# Hyperparameters under which the decision shows in the parameter whatever else happens: the
# decay factor is 1 - 0.25 r, 0.975 for a fired view (r = wd_ratio) against 0.75 (r = 1), far
# beyond every dtype's tolerance; Adam's update vanishes where v overflows (m / inf = 0).
EDGE_HP = {
    "adamp": {
        "lr": 0.5,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0.5,
        "delta": 0.1,
        "wd_ratio": 0.1,
        "nesterov": False,
    },
    "sgdp": {
        "lr": 0.1,
        "momentum": 0.8,
        "dampening": 0.0,
        "weight_decay": 0.5,
        "nesterov": False,
        "eps": 1e-8,
        "delta": 0.1,
        "wd_ratio": 0.1,
        "project_buffer": False,
    },
}

_HUGE_32 = {"grad-huge": (1.0, 1e30), "weight-huge": (1e30, 1.0), "both-huge": (1e30, 1e30)}
# dtype -> edge -> (scale of the weight, scale of the gradient); values are N(0, 1) clipped to
# [-2, 2] times the scale. "huge": |x|^2 summed over a row overflows the compute dtype; "tiny":
# it underflows to 0 (|g| itself is a normal number). float16 computes in float32 (D9), where
# its whole range is finite: there the edges test that nothing is computed in float16.
EDGES: dict[str, dict[str, tuple[float, float]]] = {
    "float64": {
        "grad-huge": (1.0, 1e160),
        "weight-huge": (1e160, 1.0),
        "both-huge": (1e160, 1e160),
        "grad-tiny": (1.0, 1e-170),
    },
    "float32": {**_HUGE_32, "grad-tiny": (1.0, 1e-30)},
    "bfloat16": {**_HUGE_32, "grad-tiny": (1.0, 1e-30)},
    "float16": {
        "grad-huge": (1.0, 1.5e4),
        "weight-huge": (1.5e4, 1.0),
        "both-huge": (1.5e4, 1.5e4),
        "grad-tiny": (1.0, 1e-4),
    },
}
EDGE_SHAPES = ((4, 6), (3, 2, 2, 2))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    c = metafunc.config._conformance
    driver = c["driver"]
    if "edge" in metafunc.fixturenames:
        params = [
            pytest.param(o, e, d, id=f"{o}-{e}-{d}")
            for o in EDGE_HP
            for d in c["dtypes"]
            for e in EDGES[d]
        ]
        metafunc.parametrize(("optimizer", "edge", "dtype"), params)
    elif "complex_dtype" in metafunc.fixturenames:
        params = []
        for o in EDGE_HP:
            for d in ("complex64", "complex128"):
                marks = []
                if d not in driver.complex_dtypes:
                    marks = [pytest.mark.skip(reason=f"{c['backend']} builds no {d} parameters")]
                params.append(pytest.param(o, d, marks=marks, id=f"{o}-{d}"))
        metafunc.parametrize(("optimizer", "complex_dtype"), params)
    elif "contract_dtype" in metafunc.fixturenames:
        metafunc.parametrize(
            ("optimizer", "contract_dtype"),
            [pytest.param(o, d, id=f"{o}-{d}") for o in EDGE_HP for d in c["dtypes"]],
        )
    elif "optimizer" in metafunc.fixturenames:
        metafunc.parametrize("optimizer", list(EDGE_HP))


def _values(rng: np.random.Generator, shape, scale: float, dtype: str) -> np.ndarray:
    return (np.clip(rng.standard_normal(shape), -2, 2) * scale).astype(numpy_dtype(dtype))


def _problem(optimizer: str, dtype: str, axis: int, params, grads) -> Problem:
    group = ProblemGroup(dict(EDGE_HP[optimizer]), axis, tuple(range(len(params))))
    return Problem(optimizer, dtype, params, grads, [group], ["contiguous"] * len(params))


def _axis(driver) -> int:
    return driver.default_channel_axis


_EDGE_RUNS: dict[tuple, tuple] = {}


def _edge_run(driver, optimizer: str, dtype: str):
    """Every edge of ``dtype`` in one problem, two weights per edge (their decisions are
    independent), run on the driver and on the reference once and kept for the edge's tests: a
    framework that compiles per problem compiles once per (optimizer, dtype)."""
    key = (id(driver), optimizer, dtype)
    if key not in _EDGE_RUNS:
        params, grads, slots = [], [[], []], {}
        for edge, (p_scale, g_scale) in EDGES[dtype].items():
            rng = np.random.default_rng(zlib.crc32(f"{optimizer}-{edge}-{dtype}".encode()))
            slots[edge] = range(len(params), len(params) + len(EDGE_SHAPES))
            params += [_values(rng, s, p_scale, dtype) for s in EDGE_SHAPES]
            for step in grads:
                step += [_values(rng, s, g_scale, dtype) for s in EDGE_SHAPES]
        axis = _axis(driver)
        error, outputs = None, None
        with np.errstate(all="ignore"):  # both sides overflow on purpose
            reference = NumpyDriver().run(_problem(optimizer, dtype, axis, params, grads))
            try:
                outputs = driver.run(_problem(optimizer, dtype, axis, params, grads))
            except Exception as e:  # reported by each edge's test
                error = e
        _EDGE_RUNS[key] = (params, grads, slots, reference, outputs, error)
    return _EDGE_RUNS[key]


def test_edges(driver, backend, optimizer, edge, dtype):
    p_scale, g_scale = EDGES[dtype][edge]
    params, grads, slots, reference, outputs, error = _edge_run(driver, optimizer, dtype)
    if error is not None:
        raise error
    axis = _axis(driver)
    rtol, atol = TOLERANCES[dtype]
    for k in range(len(grads)):
        for i in slots[edge]:
            out, ref = outputs[k][i], reference[k][i]
            before = params[i] if k == 0 else reference[k - 1][i].param
            with np.errstate(all="ignore"):
                d = adamp_core.decide(before, grads[k][i], delta=0.1, eps=1e-8, channel_axis=axis)
            x = np.asarray(out.param, np.float64)
            r = np.asarray(ref.param, np.float64)
            assert np.isfinite(r).all(), "the edge leaves the reference's range: fix the table"
            scale = np.maximum(np.abs(r), np.abs(np.asarray(before, np.float64)))
            bound = rtol * scale + atol * scale.max() + (k + 1) * ulp(r, dtype)
            bad = ~((x == r) | (np.abs(x - r) <= bound))
            if bad.any():
                j = np.unravel_index(int(np.argmax(bad)), bad.shape)
                pytest.fail(
                    f"{backend}: a {params[i].shape} weight after step {k + 1} differs from the "
                    f"reference in {dtype} at {tuple(int(t) for t in j)}: got {x[j]!r}, reference "
                    f"{r[j]!r} ({int(bad.sum())} of {bad.size} elements). Reference decision in "
                    f"the compute dtype (D10): view {d.view}, margins {tuple(d.margins)}; "
                    f"weight scale {p_scale:g}, gradient scale {g_scale:g}, channel_axis {axis}",
                    pytrace=False,
                )


def test_dtype_contract(driver, backend, optimizer, contract_dtype):
    rng = np.random.default_rng(7)
    shapes = ((3, 4), (5,))
    params = [_values(rng, s, 1.0, contract_dtype) for s in shapes]
    grads = [[_values(rng, s, 1.0, contract_dtype) for s in shapes] for _ in range(2)]
    outputs = driver.run(_problem(optimizer, contract_dtype, _axis(driver), params, grads))
    reported = [o for row in outputs for o in row if o.dtype or o.update_dtype]
    if not reported:
        pytest.skip(f"{backend} reports no dtype (Output.dtype / Output.update_dtype)")
    for k, row in enumerate(outputs):
        for i, out in enumerate(row):
            where = f"param {i} {shapes[i]} after step {k + 1}"
            if out.dtype is not None:
                assert out.dtype == contract_dtype, f"{backend}: {where} has dtype {out.dtype}"
            if out.update_dtype is not None:
                assert out.update_dtype == contract_dtype, (
                    f"{backend}: the update of {where} has dtype {out.update_dtype}, the "
                    f"parameter {contract_dtype}"
                )


def _unchanged(out: Output, initial: np.ndarray) -> str | None:
    """Why ``out`` shows that something was written, or None."""
    if not np.array_equal(np.asarray(out.param), initial):
        return "the parameter changed"
    for key, value in out.state.items():
        if key == "step" and int(np.asarray(value)) != 0:
            return f"state {key} is {int(np.asarray(value))}"
        if key != "step" and np.any(np.asarray(value) != 0):
            return f"state {key} was written"
    return None


def _real_pairs(x: np.ndarray) -> np.ndarray:
    return np.stack([x.real, x.imag], axis=-1)


def test_complex_params(driver, backend, optimizer, complex_dtype):
    rng = np.random.default_rng(11)
    # One weight: its (re, im) view (3, 4, 2) has the same channel rows whatever the axis; a 1-D
    # complex bias would become a 2-D view that D4 would treat otherwise.
    shapes = ((3, 4),)
    real = "float32" if complex_dtype == "complex64" else "float64"

    def c(shape):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(complex_dtype)

    params = [c(s) for s in shapes]
    grads = [[c(s) for s in shapes]]
    axis = _axis(driver)
    try:
        error, outputs = driver.run_rejected(
            _problem(optimizer, complex_dtype, axis, params, grads)
        )
    except NotImplementedError:
        pytest.skip(f"{backend}'s driver has no run_rejected")
    if error is not None:
        assert "complex" in str(error).lower(), (
            f"{backend} refused complex parameters with an error that does not say why: {error!r}"
        )
        for i, out in enumerate(outputs):
            why = _unchanged(out, params[i])
            assert why is None, f"{backend} raised {error!r}, but {why} (param {i})"
        return
    # Stepped: it must be AdamP/SGDP on (re, im) pairs, the reference run on real views.
    pairs = _problem(
        optimizer,
        real,
        axis % 2,  # the channel axis of the (3, 4) weight, counted from the front in its view
        [_real_pairs(p) for p in params],
        [[_real_pairs(g) for g in grads[0]]],
    )
    (reference,) = NumpyDriver().run(pairs)
    rtol, atol = TOLERANCES[real]
    for i, (out, ref) in enumerate(zip(outputs, reference, strict=True)):
        x = np.asarray(out.param)
        if not np.iscomplexobj(x) or np.array_equal(x.imag, params[i].imag):
            pytest.fail(
                f"{backend} stepped complex param {i} {shapes[i]} without moving its imaginary "
                "part: a real-only step (refuse complex parameters, or step (re, im) pairs)",
                pytrace=False,
            )
        r = ref.param.astype(np.float64)
        err = np.abs(_real_pairs(x).astype(np.float64) - r)
        bound = rtol * np.abs(r) + atol * np.abs(r).max()
        assert (err <= bound).all(), (
            f"{backend} stepped complex param {i} {shapes[i]}, but not as the reference on its "
            f"(re, im) pairs: largest error {err.max():.3g}"
        )


def test_sparse_rejected(driver, backend, optimizer):
    if driver.sparse_gradients != "rejected":
        what = {None: "has no sparse gradient type", "rows": "takes sparse gradients"}
        pytest.skip(f"{backend} {what.get(driver.sparse_gradients, '?')}")
    rng = np.random.default_rng(5)
    shape = (5, 3)
    params = [_values(rng, shape, 1.0, "float32")]
    dense = np.zeros(shape, np.float32)
    dense[[1, 3]] = _values(rng, (2, 3), 1.0, "float32")
    sparse = SparseRows(
        np.array([3, 1, 3]), np.stack([dense[3] / 2, dense[1], dense[3] / 2]), shape
    )
    problem = dataclasses.replace(
        _problem(optimizer, "float32", _axis(driver), params, [[dense]]),
        sparse=[[sparse]],
    )
    try:
        error, outputs = driver.run_rejected(problem)
    except NotImplementedError:
        pytest.skip(f"{backend}'s driver has no run_rejected")
    assert error is not None, f"{backend} took a sparse gradient it declares unsupported"
    assert "sparse" in str(error).lower(), (
        f"{backend} refused a sparse gradient with an error that does not say why: {error!r}"
    )
    why = _unchanged(outputs[0], params[0])
    assert why is None, f"{backend} raised {error!r}, but {why}"
