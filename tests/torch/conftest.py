"""The implementations of adamp_torch's step, as a fixture for the tests that run each."""

from __future__ import annotations

import pytest
from adamp_torch import _native
from adamp_torch._base import IMPLS


@pytest.fixture(params=IMPLS)
def step_path(request) -> str:
    """The name of one implementation (``"native"``, the C step; ``"foreach"``, torch ops), to
    pass as ``impl=step_path`` to every AdamP / SGDP of the test: a named implementation that
    cannot take a group raises, so a test that passes has run on it. Skips "native" where the
    C library cannot be had (test_native.py fails where it should have been built)."""
    if request.param == "native" and _native.library() is None:
        pytest.skip(_native.status())
    return request.param
