"""Counts which branch of the projection each reference-vs-external comparison reached."""

from __future__ import annotations

from collections import Counter

import pytest

_COUNTS = pytest.StashKey[Counter]()


@pytest.fixture(scope="session")
def branch_counts(request: pytest.FixtureRequest) -> Counter:
    return request.config.stash.setdefault(_COUNTS, Counter())


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    counts = config.stash.get(_COUNTS, None)
    if not counts:
        return
    terminalreporter.section("branches reached in comparisons with external implementations")
    for (target, view), n in sorted(counts.items(), key=str):
        terminalreporter.write_line(f"{target:<34} {view or 'none':<8} {n:>5} steps")
