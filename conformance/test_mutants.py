"""The suite tests itself: every mutant of ``mutants.py`` is caught by the default profile.

Collected with ``--backend=numpy`` only (conftest). Shrinking is left out: only the fact that a
falsifying example exists matters here.
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, given, settings

from .harness import ConformanceFailure, check_case
from .mutants import MUTANTS, MutantDriver
from .strategies import SCENARIOS, cases


def _run(driver: MutantDriver, scenario: str) -> None:
    @settings(phases=(Phase.explicit, Phase.generate))
    @given(case=cases(SCENARIOS[scenario], "float64"))
    def prop(case):
        check_case(driver, driver.name, case)

    prop()


def _caught(exc: BaseException) -> bool:
    if isinstance(exc, ConformanceFailure):
        return True
    return any(_caught(e) for e in getattr(exc, "exceptions", ()))  # an exception group


def test_unmutated_rewrite_passes():
    # The control: without a change the rewrite agrees with the reference, so a caught mutant
    # is caught for its one change.
    for scenario in ("adamp", "sgdp-paper-buffer", "sgdp-projected-buffer"):
        _run(MutantDriver(None), scenario)


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_mutant_is_caught(mutant: str):
    for scenario in MUTANTS[mutant].scenarios:
        with pytest.raises(Exception) as info:
            _run(MutantDriver(mutant), scenario)
        assert _caught(info.value), f"{mutant} in {scenario}: {info.value!r}"
