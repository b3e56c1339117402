"""The distribution: its wheel's file list, typing marker, and the reference's doctests."""

from __future__ import annotations

import doctest
import importlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import adamp_core

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_TOP_LEVEL = {"backends", "conformance", "tests", "examples", "benchmarks", "docs"}


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("adamp_core-*.whl")
    return path


@pytest.fixture(scope="module")
def wheel(wheel_path) -> zipfile.ZipFile:
    return zipfile.ZipFile(wheel_path)


def test_wheel_holds_only_the_import_packages(wheel):
    names = wheel.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    adapters = {p.name for p in (ROOT / "backends").glob("adamp_*") if p.is_dir()}
    assert top == {"adamp_core", "adamp_conformance"} | adapters
    assert not top & FORBIDDEN_TOP_LEVEL
    for package in top:
        assert f"{package}/py.typed" in names, f"{package} ships no py.typed"
    assert "adamp_torch/_native.c" in names  # compiled on first use (adamp_torch._native)
    # The conformance suite ships under its own name, with its data files and without the
    # checkout's alias folder.
    assert "adamp_conformance/conftest.py" in names
    assert "adamp_conformance/xfails/official.txt" in names
    assert not [n for n in names if "_checkout" in n or "__pycache__" in n]


@pytest.mark.parametrize(
    "module", ["adamp_core", "adamp_core.projection", "adamp_core.adamp", "adamp_core.sgdp"]
)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), raise_on_error=False)
    assert result.failed == 0


def test_version():
    assert adamp_core.__version__ == "0.1.0"


def test_editable_install_is_static_paths():
    """Static analysers resolve imports through plain directory entries in a .pth file, not
    through import hooks. Skipped when the project is installed from a wheel."""
    site = Path(adamp_core.__file__).resolve().parents[1]
    if site != ROOT:
        pytest.skip("adamp_core is not installed in editable mode")
    pths = [p for d in sys.path if Path(d).is_dir() for p in Path(d).glob("*adamp_core*.pth")]
    assert pths, "no .pth file of the editable install found"
    for line in pths[0].read_text().splitlines():
        assert not line.startswith("import"), f"import hook in {pths[0]}: {line}"
        assert Path(line).is_dir(), line


def test_installed_conformance_suite_runs_from_an_empty_folder(wheel_path, tmp_path):
    """The wheel, installed in a fresh virtual environment, gives the command adamp-conformance,
    which runs outside any checkout: the numpy backend, and the suite's own command-line tests
    (an outside driver module on PYTHONPATH, a wrong one failing with a replay command that
    replays, an xfails file honoured, strict and checked for stale patterns).

    To stay cheap, the wheel is installed with --no-deps, and the dependencies (numpy, pytest,
    hypothesis) come from this environment's site-packages as a plain path entry: its .pth files
    are not processed, so the checkout's folders (the editable install) are not importable
    there, which the test checks. A full install with the [conformance] extra from the package
    index is the same apart from where those three packages come from.
    """
    pip = (sys.executable, "-m", "pip")
    selection = "test_outside or test_xfails or (test_trajectory and sgdp-paper-buffer-float32)"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            *pip,
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel_path),
        ],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "numpy").is_dir())
    (Path(site) / "_deps_from_the_test_environment.pth").write_text(ours + "\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["CONFORMANCE_CI_EXAMPLES"] = "3"
    where = subprocess.run(
        [
            str(python),
            "-c",
            "import adamp_conformance, adamp_core, importlib.util as u; "
            "print(adamp_conformance.__file__, adamp_core.__file__, u.find_spec('conformance'))",
        ],
        cwd=empty,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(w.startswith(str(venv)) for w in where[:2]) and where[2] == "None", where
    out = subprocess.run(
        [str(venv / "bin" / "adamp-conformance"), "--backend=numpy", "-q", "-k", selection],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "conformance: backend numpy" in out.stdout and "3 passed" in out.stdout
