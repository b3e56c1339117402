"""The demonstration (``make demo``): its problems are what it says, and it runs end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import demo_backends  # noqa: E402
import demo_norms  # noqa: E402
import demo_toy  # noqa: E402

PLAIN = [c for c in demo_toy.CONFIGS if c.delta == 0]


def test_toy_setting():
    """The published setting: w0 = (0, 1), w* 1e-3 rad from -w0, lr 0.01, 500 steps, 7 runs."""
    angle = math.atan2(demo_toy.W_STAR[1], demo_toy.W_STAR[0])
    assert math.isclose(angle - (-math.pi / 2), 1e-3, rel_tol=1e-9)
    assert demo_toy.W0.shape == (1, 2) and demo_toy.LR == 0.01 and demo_toy.STEPS == 500
    assert [c.momentum for c in demo_toy.CONFIGS] == [0.0, 0.9, 0.95, 0.99, 0.9, 0.95, 0.99]


def test_toy_gradient():
    """Scale invariance and its two consequences (derived in docs/algorithm.md, section 1), and
    the gradient against central finite differences of the loss."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = rng.standard_normal((1, 2))
        g = demo_toy.grad(w)
        assert math.isclose(demo_toy.loss(2.5 * w), demo_toy.loss(w), abs_tol=1e-14)
        assert abs(np.sum(g * w)) <= 1e-14 * np.linalg.norm(g) * np.linalg.norm(w) + 1e-300
        h = 1e-6
        fd = [(demo_toy.loss(w + h * e) - demo_toy.loss(w - h * e)) / (2 * h) for e in np.eye(2)]
        assert np.allclose(g[0], fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("cfg", PLAIN, ids=[c.name for c in PLAIN])
def test_heavy_ball_is_torch_sgd(cfg):
    """sgdp_step with delta=0 is heavy-ball GD exactly as torch.optim.SGD does it (external)."""
    pytest.importorskip("torch")
    steps = 200
    ref = demo_toy.run_reference(cfg, steps)
    assert demo_toy.max_rel_diff(demo_toy.run_torch_sgd(cfg, steps), ref) <= 1e-13


def test_delta_zero_never_projects():
    """P3 with delta = 0 needs max |cos| < 0: never. With delta = 0.1 the same steps all fire,
    since the toy's gradient is orthogonal to w (cos ~ 1e-16 < 0.1 / sqrt(2))."""
    for cfg in PLAIN:
        tr = demo_toy.run_reference(cfg, 100)
        assert demo_toy.count_decisions(tr, 0.0) == 0
        assert demo_toy.count_decisions(tr, 0.1) == 100


def test_toy_shows_the_effect():
    """The paper's claim on its own toy: momentum inflates |w| and SGDP keeps it near 1, and
    SGDP ends at a lower loss than heavy ball at every beta."""
    final = {c.name: demo_toy.run_reference(c)[-1] for c in demo_toy.CONFIGS}
    for b in demo_toy.BETAS:
        m, p = final[f"GD+momentum {b}"], final[f"SGDP {b}"]
        assert np.linalg.norm(m) > 2.5 > 1.2 > np.linalg.norm(p)
        assert demo_toy.loss(p) < demo_toy.loss(m) / 10


ADAPTERS = list(demo_toy.RUNNERS)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # keras' TF backend, numpy 2 copy=
@pytest.mark.parametrize("name", ADAPTERS)
def test_toy_through_adapter(name):
    """Each installed adapter reproduces the reference on the 7 toy runs (float64)."""
    loaded = demo_backends.load(name)
    if loaded.module is None:
        pytest.skip(f"{name}: {loaded.reason}")
    steps = 150
    for cfg in demo_toy.CONFIGS:
        tr = demo_toy.RUNNERS[name](loaded.module, cfg, steps)
        diff = demo_toy.max_rel_diff(tr, demo_toy.run_reference(cfg, steps))
        assert diff <= demo_toy.RTOL, f"{name} {cfg.name}: max rel diff {diff:.1e}"


def test_norm_identities_and_growth_ratio():
    """Part 2: the paper's identities hold to rounding, and the heavy-ball growth ratio is near
    (1 + beta) / (1 - beta) = 19 for beta = 0.9 (derived in docs/algorithm.md, section 2)."""
    prob = demo_norms.make_problem(1500)
    gd, hb, sgdp = (demo_norms.run(prob, m, d) for m, d in ((0, 0), (0.9, 0), (0.9, 0.1)))
    assert gd.max_residual < 1e-6 and hb.max_residual < 1e-6
    assert sgdp.max_residual < 1e-4  # P4 divides by |p| + eps: a radial leftover of order eps
    assert math.isclose(gd.ratio(0), 1.0, rel_tol=1e-6)
    assert abs(hb.ratio(750) / 19 - 1) < 0.05
    assert sgdp.ratio(750) <= 1.0 + 1e-6  # |Pi(p)| <= |p|


def test_demo_runs(tmp_path: Path):
    """``examples/demo.py`` end to end with small settings: three parts, pictures, summary."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "examples" / "demo.py"),
        "--steps",
        "45",
        "--seeds",
        "1",
        "--toy-steps",
        "60",
        "--norm-steps",
        "200",
        "--out",
        str(out),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for heading in ("== Part 1", "== Part 2", "== Part 3", "== Summary"):
        assert heading in res.stdout
    summary = json.loads((out / "summary.json").read_text())
    for part, picture in (
        ("toy", "toy.png"),
        ("norms", "norm_growth.png"),
        ("digits", "digits_torch.png"),
    ):
        assert Path(summary[part]["picture"]) == out / picture
        assert (out / picture).stat().st_size > 10_000
    assert set(summary["toy"]["backends"]) == set(demo_backends.ADAPTERS)  # none left unsaid
    assert summary["toy"]["checks"]["delta0_fired"] == 0
    assert set(summary["digits"]["optimizers"]) <= {"SGD", "SGDP", "AdamW", "AdamP"}


def test_demo_rejects_bad_options():
    cmd = [sys.executable, str(ROOT / "examples" / "demo.py"), "--seeds", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--seeds must be >= 1" in res.stderr
