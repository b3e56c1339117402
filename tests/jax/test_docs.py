"""Runs every Python block of docs/jax.md, in order, in one namespace (docs and code agree:
where the docs show code, a test runs it)."""

from __future__ import annotations

from pathlib import Path

from tests.docs.test_docs_code import python_blocks

DOC = Path(__file__).resolve().parents[2] / "docs" / "jax.md"


def test_every_python_block_of_the_jax_page_runs():
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 5, "docs/jax.md lost its examples"
    namespace: dict = {}
    for line, block in blocks:
        exec(compile("\n" * (line - 1) + block, str(DOC), "exec"), namespace)
    # the last blocks left a restored state and per-leaf decisions behind
    assert set(namespace["projected"]) == {"conv", "dense"}
    assert len(namespace["restored"]) == len(namespace["opt_state"])
    # the state's optax names map onto PyTorch's keys (adamp_torch, the official package)
    assert sorted(namespace["as_torch"]) == ["exp_avg", "exp_avg_sq", "step"]
