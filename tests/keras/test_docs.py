"""The Python examples of docs/keras.md run, in order, in one namespace, on every backend."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tests.docs.test_docs_code import python_blocks

DOC = Path(__file__).resolve().parents[2] / "docs" / "keras.md"


def test_keras_md_examples_run(fresh_keras, capsys):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 3
    rng = np.random.default_rng(0)
    # "your data": a few images and integer labels, as the examples say.
    namespace = {
        "x": rng.standard_normal((32, 32, 32, 3)).astype("float32"),
        "y": rng.integers(0, 10, 32),
    }
    for line, block in blocks:
        exec(compile("\n" * (line - 1) + block, str(DOC), "exec"), namespace)
    printed = capsys.readouterr().out
    # The last example printed one line per kernel: 2 convolutions and the dense head.
    assert len(re.findall(r"channel +\d+\.\d%  layer +\d+\.\d%", printed)) == 3
