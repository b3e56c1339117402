"""Parameters and state follow the float64 reference after every step (harness.check_case)."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from .harness import check_case
from .report import RECORDER
from .strategies import SCENARIOS, cases

# Under the ci profile the sparse-rows scenarios stop after this many examples per test: they
# repeat the other scenarios' checks with the gradient in a sparse form, whose handling needs
# few examples, and they run on the frameworks that compile per shape.
SPARSE_CI_EXAMPLES = 4


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
    row = RECORDER.rows.get(request.node.nodeid)
    if sc.sparse and settings.get_current_profile_name() == "ci" and row:
        if row.examples >= SPARSE_CI_EXAMPLES:  # drawn all the same: hypothesis wants that
            return
    stats = check_case(driver, backend, case)
    for b in sorted(stats.branches):
        event(f"reached {b}")
    if stats.ties:
        event("near-tie divergence")
    if stats.overflows:
        event("reference beyond the dtype's range")
    RECORDER.add(request.node.nodeid, sc.optimizer, scenario, dtype, stats)
