"""The distribution: its wheel's file list, typing marker, and the reference's doctests."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import adamp_core

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_TOP_LEVEL = {"backends", "conformance", "tests", "examples", "benchmarks", "docs"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("adamp_core-*.whl")
    return zipfile.ZipFile(path)


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
