"""Parameters and state follow the float64 reference after every step (harness.check_case)."""

from __future__ import annotations

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from .harness import check_case
from .report import RECORDER
from .strategies import SCENARIOS, cases


@given(data=st.data())
def test_trajectory(data, request: pytest.FixtureRequest, driver, backend, scenario, dtype):
    sc = SCENARIOS[scenario]
    case = data.draw(
        cases(
            sc,
            dtype,
            channel_axes=driver.channel_axes or (0, 1, -1, -2),
            default_axis=driver.default_channel_axis,
        ),
        label="case",
    )
    stats = check_case(driver, backend, case)
    for b in sorted(stats.branches):
        event(f"reached {b}")
    if stats.ties:
        event("near-tie divergence")
    if stats.overflows:
        event("reference beyond the dtype's range")
    RECORDER.add(request.node.nodeid, sc.optimizer, scenario, dtype, stats)
