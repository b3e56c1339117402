"""The adapter as a package: what importing it loads, and its docstring examples."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import adamp_jax
import adamp_jax._alias


def test_import_loads_no_other_framework():
    code = (
        "import sys, adamp_jax; "
        "print(sorted(m for m in ('torch', 'tensorflow', 'keras', 'flax') if m in sys.modules))"
    )
    backends = str(Path(adamp_jax.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (backends, os.environ.get("PYTHONPATH", "")) if p)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


def test_docstring_examples():
    result = doctest.testmod(adamp_jax._alias, raise_on_error=False)
    assert result.attempted > 0 and result.failed == 0
