"""The command line does what docs/conformance.md says (collected with --backend=numpy only).

Each check runs the suite in a subprocess, as ``python -m PACKAGE`` (the ``adamp-conformance``
command) from an empty folder, with a handful of examples: the same checks pass in a checkout
(``conformance``) and in an installed wheel (``adamp_conformance``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap

PACKAGE = __package__  # "conformance" in a checkout, "adamp_conformance" installed


def _pytest(*args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, CONFORMANCE_CI_EXAMPLES="3")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as empty:
        return subprocess.run(
            [sys.executable, "-m", PACKAGE, "-q", *args],
            cwd=empty,
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
        f"--backend={PACKAGE}.drivers.numpy_driver:NumpyDriver",
        "--dtype=float64",
        f"--report={report}",
        "-k",
        "test_trajectory and adamp-float64",
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"conformance: backend {PACKAGE}.drivers.numpy_driver:NumpyDriver" in out.stdout
    assert "hypothesis profile ci" in out.stdout
    doc = json.loads(report.read_text())
    (row,) = doc["rows"]
    assert row["scenario"] == "adamp" and row["dtype"] == "float64"
    assert row["examples"] == 3 and row["verdict"] == "pass" and row["max_abs"] == 0.0


# A wrong implementation written from the docs: AdamP whose learning rate is 1% too large, so
# that any example with a step shows it, in a module of its own on PYTHONPATH.
_OUTSIDE_DRIVER = """
from adamp_conformance import Driver, Output, Problem
import adamp_core


class LrTooLarge(Driver):
    name = "lr-too-large"
    version = "0"

    def run(self, problem: Problem):
        outputs, params = [], list(problem.params)
        states = [adamp_core.adamp_init(p) for p in params]
        hp = {i: (g.hyperparams, g.channel_axis) for g in problem.groups for i in g.indices}
        for grads in problem.grads:
            row = []
            for i, g in enumerate(grads):
                h, axis = hp[i]
                h = dict(h, lr=h["lr"] * 1.01)
                params[i], states[i] = adamp_core.adamp_step(
                    params[i], g, states[i], channel_axis=axis, **h
                )
                row.append(Output(params[i], states[i]._asdict()))
            outputs.append(row)
        return outputs
"""


def test_outside_driver_on_the_path_is_run_and_a_wrong_one_fails_with_a_replay(tmp_path):
    (tmp_path / "my_adamp_driver.py").write_text(_OUTSIDE_DRIVER)
    out = _pytest(
        "--backend=my_adamp_driver:LrTooLarge",
        "--dtype=float64",
        "-k",
        "test_trajectory and adamp-float64",
        pythonpath=str(tmp_path),
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]
    assert "conformance: backend my_adamp_driver:LrTooLarge" in text
    replay = re.search(r"reproduce: (python -m \S+ --backend=\S+ (\"Case\(.*\)\"))", text)
    assert replay, text[-3000:]
    assert replay.group(1).startswith(f"python -m {PACKAGE}.repro ")
    case = replay.group(2).strip('"')
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            f"{PACKAGE}.repro",
            "--backend=my_adamp_driver:LrTooLarge",
            case,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 1 and "FAIL" in again.stdout, again.stdout + again.stderr
    # Listed with its reason in an xfails file, the same failure is expected: the run passes.
    xfails = tmp_path / "lr.xfails"
    xfails.write_text("test_trajectory[adamp-float64]  its learning rate is 1% too large\n")
    out = _pytest(
        "--backend=my_adamp_driver:LrTooLarge",
        "--dtype=float64",
        f"--xfails-file={xfails}",
        "-k",
        "test_trajectory and adamp-float64",
        pythonpath=str(tmp_path),
    )
    assert out.returncode == 0 and "1 xfailed" in out.stdout, out.stdout[-3000:]


def test_xfails_file_is_strict_reports_stale_entries_and_needs_reasons(tmp_path):
    xfails = tmp_path / "xfails.txt"
    xfails.write_text(
        textwrap.dedent(
            """\
            # a passing test listed as failing must fail the run (strict)
            test_trajectory[adamp-float64]  claimed to deviate
            test_trajectory[no-such-scenario-*]
                a pattern that matches nothing is reported
            """
        )
    )
    out = _pytest(
        "--backend=numpy", "--dtype=float64", f"--xfails-file={xfails}", "-k", "adamp-float64"
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]
    assert "XPASS(strict)" in text and "claimed to deviate" in text
    assert "'test_trajectory[no-such-scenario-*]'" in text and "matches no test" in text
    xfails.write_text("test_trajectory[adamp-float64]\n")
    out = _pytest("--backend=numpy", f"--xfails-file={xfails}")
    assert out.returncode != 0 and "has no reason" in out.stdout + out.stderr
