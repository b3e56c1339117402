"""The command line does what docs/conformance.md says (collected with --backend=numpy only).

Each check runs pytest on this suite in a subprocess, with a handful of examples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pytest(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CONFORMANCE_CI_EXAMPLES="3")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_backend_is_required_and_unknown_ones_list_the_choices():
    for args in ((), ("--backend=nope",)):
        out = _pytest(*args)
        assert out.returncode != 0
        text = out.stdout + out.stderr
        assert "choose one of: numpy, official, pytorch-optimizer, torch, torch-ops, jax" in text


def test_unsupported_dtype_and_device_fail_loudly():
    out = _pytest("--backend=numpy", "--dtype=float8")
    assert out.returncode != 0 and "choose from: float64" in out.stdout + out.stderr
    out = _pytest("--backend=numpy", "--device=gpu")
    assert out.returncode != 0 and "cpu only" in out.stdout + out.stderr


def test_module_attribute_driver_header_and_json_report(tmp_path):
    report = tmp_path / "r.json"
    out = _pytest(
        "--backend=conformance.drivers.numpy_driver:NumpyDriver",
        "--dtype=float64",
        f"--report={report}",
        "-k",
        "test_trajectory and adamp-float64",
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "conformance: backend conformance.drivers.numpy_driver:NumpyDriver" in out.stdout
    assert "hypothesis profile ci" in out.stdout
    doc = json.loads(report.read_text())
    (row,) = doc["rows"]
    assert row["scenario"] == "adamp" and row["dtype"] == "float64"
    assert row["examples"] == 3 and row["verdict"] == "pass" and row["max_abs"] == 0.0
