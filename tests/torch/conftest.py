"""The two implementations of a CPU step, as a fixture for the tests that run both."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["c", "torch"])
def step_path(request, monkeypatch):
    """Steps CPU tensors with the C step (``adamp_torch._native``, where it could be built;
    test_native.py fails where it should have been) or with the torch ops only. Returns the
    path's name and a list that receives the number of tensors of each eager C call."""
    from adamp_torch import _native

    calls: list[int] = []
    if request.param == "torch":
        monkeypatch.setattr(_native, "_lib", None)
    else:
        if _native.library() is None:
            pytest.skip(_native.status())
        impl = _native._step_impl
        monkeypatch.setattr(_native, "_step_impl", lambda *a: calls.append(len(a[0])) or impl(*a))
    return request.param, calls
