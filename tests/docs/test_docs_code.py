"""The docs' code runs: every ```python block of a page, in order, in one namespace per page.

Covered pages: README.md and every ``docs/*.md`` (so a new page is covered when it is added),
except the pages whose examples need their framework's test set-up and run from that
framework's suite with ``python_blocks`` from here: docs/jax.md (tests/jax/test_docs.py) and
docs/keras.md (tests/keras/test_docs.py, once per Keras backend). A block fenced
exactly as ```python runs; any other fence (```text, ```bash, ```python no-run, ...) is prose.
Blocks run in a temporary working directory with matplotlib's Agg backend, and a failure points
at the page and line of the failing statement (the code is compiled with the page's line
numbers).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OWN_RUNNER = {"jax.md", "keras.md"}
PAGES = [ROOT / "README.md"] + [
    p for p in sorted((ROOT / "docs").glob("*.md")) if p.name not in OWN_RUNNER
]
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line number, code)`` of every block fenced exactly as ```python, in order.

    A fence indented by up to three spaces (inside a list item) has its indent removed from the
    block's lines.
    """
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m["fence"], m["info"].strip(), i + 1
        indent = len(m["indent"])
        end = start
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        if info == "python":
            code = "\n".join(line[indent:] for line in lines[start:end])
            blocks.append((start + 1, code))
        i = end + 1
    return blocks


def test_fences_are_parsed():
    """The extractor itself: only ```python blocks, with their 1-based first line."""
    text = (
        "a\n```python\nx = 1\n```\n```text\nno\n```\n"
        "````python\ny = 2\n````\n```python no-run\nz\n```\n"
    )
    assert python_blocks(text) == [(3, "x = 1"), (9, "y = 2")]
    assert python_blocks("- item\n  ```python\n  a = 1\n  ```\n") == [(3, "a = 1")]


def test_pages_are_found():
    assert ROOT / "docs" / "algorithm.md" in PAGES


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_code_runs(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    blocks = python_blocks(page.read_text())
    if not blocks:
        pytest.skip(f"{page.name} has no ```python blocks")
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, code in blocks:
        # Pad with newlines so tracebacks show the page's own line numbers.
        compiled = compile("\n" * (line - 1) + code, str(page), "exec")
        exec(compiled, namespace)  # the page's code is what is under test


def test_algorithm_page_has_its_checks():
    """The teaching page keeps its runnable checks (one per section and per decision at least)."""
    blocks = python_blocks((ROOT / "docs" / "algorithm.md").read_text())
    assert len(blocks) >= 14
    code = "\n".join(c for _, c in blocks)
    assert code.count("assert") >= 30
    assert os.path.exists(ROOT / "adamp_core" / "__init__.py")
