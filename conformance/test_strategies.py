"""The strategies keep their promises (collected with ``--backend=numpy`` only)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import adamp_core

from .harness import make_gradient, prepare
from .strategies import (
    GRADIENT_KINDS,
    INVALID_ARGUMENTS,
    MAX_ELEMENTS,
    MAX_STEPS,
    SCENARIOS,
    Case,
    Group,
    ParamSpec,
    cases,
    invalid_hyperparams,
    shapes,
)


@given(shape=shapes())
def test_shapes_are_bounded(shape):
    assert 0 <= len(shape) <= 5
    assert all(1 <= d <= 5 for d in shape)
    assert math.prod(shape) <= MAX_ELEMENTS


@given(shape=shapes(zero_size=True))
def test_zero_size_shapes_have_a_zero(shape):
    assert len(shape) >= 1 and 0 in shape


@given(
    data=st.data(),
    scenario=st.sampled_from(sorted(SCENARIOS)),
    dtype=st.sampled_from(["float64", "float32"]),
)
def test_cases_are_valid_and_bounded(data, scenario, dtype):
    sc = SCENARIOS[scenario]
    case = data.draw(cases(sc, dtype))
    assert case.optimizer == sc.optimizer and 1 <= case.steps <= MAX_STEPS
    assert 1 <= len(case.groups) <= 2
    for group in case.groups:
        hp = group.hyperparams
        adamp_core.validate_hyperparameters(**hp)  # raises on an invalid draw
        if dtype != "float64":  # representable in float32, as frameworks may hold them
            assert all(float(np.float32(v)) == v for v in _numbers(hp))
        if sc.optimizer == "sgdp":
            assert hp["project_buffer"] is sc.project_buffer
        for spec in group.params:
            assert len(spec.kinds) == case.steps and set(spec.kinds) <= set(GRADIENT_KINDS)
    specs = [p for _, p in case.params]
    if sc.zero_size:
        assert any(0 in p.shape for p in specs)
    if sc.strided:
        assert any(p.layout == "strided" and len(p.shape) >= 2 for p in specs)


def _numbers(hp):
    for v in hp.values():
        if isinstance(v, tuple):
            yield from v
        elif not isinstance(v, bool):
            yield v


@given(case=cases(SCENARIOS["adamp"], "float32"))
def test_case_repr_round_trips_and_values_are_reproducible(case):
    # The repro command pastes repr(case); the same case must give the same arrays.
    again = eval(repr(case), {"Case": Case, "Group": Group, "ParamSpec": ParamSpec})
    assert again == case
    a, b = prepare(case), prepare(again)
    for x, y in zip(a.problem.params, b.problem.params, strict=True):
        assert x.dtype == np.float32 and x.tobytes() == y.tobytes()
    for gx, gy in zip(a.problem.grads, b.problem.grads, strict=True):
        assert all(x.tobytes() == y.tobytes() for x, y in zip(gx, gy, strict=True))


@pytest.mark.parametrize("axis", [0, -1])
@pytest.mark.parametrize(
    ("kind", "view"), [("channel", "channel"), ("layer", "layer"), ("none", None)]
)
@given(seed=st.integers(0, 2**32 - 1), shape=shapes(min_ndim=2))
def test_gradient_kinds_reach_their_branch(kind, view, axis, seed, shape):
    # Exact by construction (harness.make_gradient, adamp_core.testing.branch_gradient) for a
    # weight with >= 2 channels whose rows have >= 4 entries (row cos ~ 0.7 for "none" is far
    # above 0.1 / sqrt(4)); with one channel the layer view is the channel view.
    channels = shape[axis]
    n = math.prod(shape) // channels
    if channels < 2 or n < 4:
        return
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape)
    g = make_gradient(kind, p, rng, axis, 0.1)
    assert adamp_core.decide(p, g, delta=0.1, eps=1e-8, channel_axis=axis).view == view


@pytest.mark.parametrize("fraction", [0.5, 0.9, 1.1, 2.0])
@given(seed=st.integers(0, 2**32 - 1), shape=shapes(min_ndim=2))
def test_threshold_gradient_sits_at_its_fraction(fraction, seed, shape):
    # Every channel row's cosine is fraction * delta / sqrt(n): the channel margin has the sign
    # of fraction - 1 (rows of length 1 have cos 1 and are skipped).
    n = math.prod(shape) // shape[0]
    if n < 2:
        return
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape)
    g = make_gradient("threshold", p, rng, 0, 0.3, fraction=fraction)
    m = adamp_core.decide(p, g, delta=0.3, eps=1e-8, channel_axis=0).margins.channel
    assert (m < 0) == (fraction < 1)
    assert abs(m) == pytest.approx(abs(fraction - 1) * 0.3 / math.sqrt(n), rel=1e-9)


@pytest.mark.parametrize(
    ("optimizer", "argument"), [(o, a) for o, args in INVALID_ARGUMENTS.items() for a in args]
)
@given(data=st.data())
def test_invalid_hyperparameters_are_invalid_for_the_reference(data, optimizer, argument):
    hp, blamed = data.draw(invalid_hyperparams(optimizer, argument))
    label = {"beta1": "betas[0]", "beta2": "betas[1]"}.get(blamed, blamed)
    with pytest.raises(ValueError, match=label.replace("[", r"\[").replace("]", r"\]")):
        adamp_core.validate_hyperparameters(**hp)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@given(data=st.data())
def test_sparse_rows_add_up_to_the_dense_gradient(data, dtype):
    # What a sparse driver feeds (repeated indices summed, as IndexedSlices / BCOO do) is
    # exactly the dense gradient the reference steps with.
    optimizer = data.draw(st.sampled_from(["adamp", "sgdp"]))
    case = data.draw(cases(SCENARIOS[f"{optimizer}-sparse-rows"], dtype))
    problem = prepare(case).problem
    specs = [spec for _, spec in case.params]
    assert sum(s.sparse_rows for s in specs) == 1
    for k, row in enumerate(problem.sparse):
        for i, s in enumerate(row):
            if not specs[i].sparse_rows:
                assert s is None
                continue
            total = np.zeros_like(problem.grads[k][i])
            np.add.at(total, s.indices, s.values)
            assert np.array_equal(total, problem.grads[k][i])
            assert s.values.dtype == problem.grads[k][i].dtype
            nonzero = np.flatnonzero(np.abs(problem.grads[k][i]).reshape(s.shape[0], -1).sum(1))
            assert set(nonzero) <= set(s.indices.tolist())
