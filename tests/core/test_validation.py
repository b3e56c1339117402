"""Bad inputs, each with the error and message it must give; edge cases of D4 and D9.

Decision labels (D1-D10) are those of docs/algorithm.md, section 6.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from adamp_core import (
    adamp_init,
    adamp_step,
    decide,
    projection,
    sgdp_init,
    sgdp_step,
    validate_hyperparameters,
)

P = np.ones((3, 4))
G = np.full((3, 4), 0.5)

# (step, kwargs, error, message regex): one table for the reference, reused by the adapters'
# tests through validate_hyperparameters, which every adapter calls.
BAD_INPUTS = [
    ("adamp", dict(lr=-1e-3), ValueError, r"lr must be >= 0 \(got -0.001\)"),
    ("adamp", dict(lr=float("nan")), ValueError, r"lr must be >= 0"),
    ("adamp", dict(eps=0.0), ValueError, r"eps must be > 0 \(got 0.0\)"),
    ("adamp", dict(eps=-1e-8), ValueError, r"eps must be > 0"),
    ("adamp", dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be in \[0, 1\) \(got 1.0\)"),
    ("adamp", dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be in \[0, 1\)"),
    ("adamp", dict(betas=(0.9,)), ValueError, r"betas must be a pair"),
    ("adamp", dict(weight_decay=-0.1), ValueError, r"weight_decay must be >= 0 \(got -0.1\)"),
    ("adamp", dict(delta=-0.1), ValueError, r"delta must be >= 0"),
    ("adamp", dict(wd_ratio=1.5), ValueError, r"wd_ratio must be in \[0, 1\] \(got 1.5\)"),
    ("adamp", dict(wd_ratio=-0.1), ValueError, r"wd_ratio must be in \[0, 1\]"),
    ("adamp", dict(lr="fast"), ValueError, r"lr must be a real number >= 0 \(got 'fast'\)"),
    ("adamp", dict(nesterov="yes"), ValueError, r"nesterov must be True or False"),
    ("adamp", dict(channel_axis=2), ValueError, r"channel_axis must be in \[-2, 2\)"),
    ("adamp", dict(channel_axis=-3), ValueError, r"channel_axis must be in \[-2, 2\)"),
    ("adamp", dict(channel_axis=0.0), ValueError, r"channel_axis must be an integer"),
    ("sgdp", dict(lr=-0.1), ValueError, r"lr must be >= 0"),
    ("sgdp", dict(momentum=1.0), ValueError, r"momentum must be in \[0, 1\) \(got 1.0\)"),
    ("sgdp", dict(momentum=-0.5), ValueError, r"momentum must be in \[0, 1\)"),
    ("sgdp", dict(dampening=1.1), ValueError, r"dampening must be in \[0, 1\] \(got 1.1\)"),
    ("sgdp", dict(weight_decay=-1.0), ValueError, r"weight_decay must be >= 0"),
    ("sgdp", dict(nesterov=True), ValueError, r"nesterov=True requires momentum > 0"),
    (
        "sgdp",
        dict(nesterov=True, momentum=0.9, dampening=0.1),
        ValueError,
        r"nesterov=True requires momentum > 0 and dampening == 0",
    ),
    ("sgdp", dict(project_buffer=2), ValueError, r"project_buffer must be True or False"),
    ("sgdp", dict(channel_axis=5), ValueError, r"channel_axis must be in \[-2, 2\)"),
]


def call(which, **kw):
    if which == "adamp":
        return adamp_step(P, G, adamp_init(P), **kw)
    return sgdp_step(P, G, sgdp_init(P), **{"lr": 0.1, **kw})


@pytest.mark.parametrize(("which", "kwargs", "error", "match"), BAD_INPUTS, ids=str)
def test_bad_hyperparameters(which, kwargs, error, match):
    with pytest.raises(error, match=match):
        call(which, **kwargs)


def test_shape_mismatch():
    with pytest.raises(ValueError, match=r"grad shape \(4, 3\) does not match param shape \(3, 4"):
        adamp_step(P, G.T, adamp_init(P))
    with pytest.raises(ValueError, match=r"state.exp_avg shape \(2, 2\) does not match"):
        adamp_step(P, G, adamp_init(np.ones((2, 2))))
    with pytest.raises(ValueError, match=r"grad shape"):
        projection(P, G, G.T, delta=0.1, wd_ratio=0.1, eps=1e-8)


def test_non_float_param():
    with pytest.raises(ValueError, match=r"param must be a floating-point array \(got dtype int64"):
        adamp_step(np.ones((2, 2), dtype=np.int64), np.ones((2, 2)), adamp_init(np.ones((2, 2))))


def test_validator_names_the_callers_spelling():
    with pytest.raises(ValueError, match=r"epsilon must be > 0"):
        validate_hyperparameters(names={"eps": "epsilon"}, eps=0.0)
    with pytest.raises(ValueError, match=r"beta_2 must be in \[0, 1\)"):
        validate_hyperparameters(names={"betas[1]": "beta_2"}, betas=(0.9, 1.0))
    with pytest.raises(TypeError, match=r"unknown hyperparameter 'momentun'"):
        validate_hyperparameters(momentun=0.9)
    validate_hyperparameters(lr=None)  # a schedule: not checked here


def test_channel_axis_is_free_for_ineligible_params():
    """ndim <= 1 is never projected (D4), so any integer axis is accepted for it."""
    p = np.ones(5)
    adamp_step(p, p, adamp_init(p), channel_axis=3)


def readonly(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(
    "shape", [(), (0,), (5,), (0, 3), (3, 0), (2, 0, 4), (1, 1), (1, 6), (6, 1), (2, 1, 1, 3)]
)
@pytest.mark.parametrize("grad_kind", ["zero", "random"])
@pytest.mark.parametrize("param_kind", ["zero", "random"])
def test_edge_shapes_no_warnings_no_nan(shape, grad_kind, param_kind):
    rng = np.random.default_rng(0)
    p = readonly(np.zeros(shape) if param_kind == "zero" else rng.standard_normal(shape))
    g = readonly(np.zeros(shape) if grad_kind == "zero" else rng.standard_normal(shape))
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        a_state = adamp_init(p)
        s_state = sgdp_init(p)
        for _ in range(3):  # inputs are read-only: any write would raise
            pa, a_state = adamp_step(p, g, a_state, lr=0.1, weight_decay=0.1)
            ps, s_state = sgdp_step(p, g, s_state, lr=0.1, momentum=0.9, project_buffer=True)
    for out in (pa, ps, a_state.exp_avg, a_state.exp_avg_sq, s_state.momentum_buffer):
        assert out.shape == shape and np.all(np.isfinite(out))
    assert a_state.step == 3


def test_all_zero_gradient_fires_and_decays_with_wd_ratio():
    """D4: cos = 0 for a zero gradient, so the channel view fires and r = wd_ratio."""
    p = np.ones((2, 3))
    out = projection(p, np.zeros_like(p), np.zeros_like(p), delta=0.1, wd_ratio=0.3, eps=1e-8)
    assert out.view == "channel" and out.r == 0.3
    assert out.margins.channel == pytest.approx(-0.1 / np.sqrt(3))


def test_nonfinite_gradient_propagates():
    """As in Adam: a NaN gradient reaches the parameter; no view fires (NaN < x is false)."""
    p = np.ones((2, 3))
    g = np.ones((2, 3))
    g[0, 0] = np.nan
    assert decide(p, g, delta=0.1, eps=1e-8).view is None
    with np.errstate(invalid="ignore"):
        p1, _ = adamp_step(p, g, adamp_init(p))
    assert np.isnan(p1[0, 0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_output_dtype_is_input_dtype(dtype):
    """D9: float16 is computed in float32 (its state too) and stored back as float16."""
    p = np.full((2, 3), 0.5, dtype=dtype)
    g = np.full((2, 3), 1e-4, dtype=dtype)  # g^2 = 1e-8 underflows float16 (min subnormal 6e-8)
    p1, s1 = adamp_step(p, g, adamp_init(p), lr=1e-3)
    assert p1.dtype == dtype
    assert s1.exp_avg_sq.dtype == (np.float64 if dtype == np.float64 else np.float32)
    assert np.all(np.isfinite(p1)) and np.all(s1.exp_avg_sq > 0)
    p2, _ = sgdp_step(p, g, sgdp_init(p), lr=1e-3, momentum=0.9)
    assert p2.dtype == dtype


def test_importing_the_reference_loads_no_framework():
    code = (
        "import sys, adamp_core, adamp_core.testing\n"
        "heavy = {'torch', 'jax', 'jaxlib', 'tensorflow', 'keras', 'optax', 'flax'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
