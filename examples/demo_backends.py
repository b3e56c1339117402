"""Imports the adapters defensively: a missing backend is reported, never skipped silently."""

from __future__ import annotations

import importlib
from typing import NamedTuple

ADAPTERS = ("adamp_torch", "adamp_jax", "adamp_keras")


class Loaded(NamedTuple):
    """An adapter module, or None with the reason it could not be used."""

    name: str
    module: object | None
    reason: str


def load(name: str) -> Loaded:
    """Imports ``name``; a missing module and a failing import are told apart in ``reason``."""
    try:
        return Loaded(name, importlib.import_module(name), "installed")
    except ModuleNotFoundError as e:
        return Loaded(name, None, f"not installed ({e.name} missing)")
    except Exception as e:  # an adapter under construction may fail to import: say how
        return Loaded(name, None, f"import failed: {type(e).__name__}: {e}")


def has(module: object | None, *attrs: str) -> bool:
    """True when ``module`` exists and offers every attribute in ``attrs``."""
    return module is not None and all(hasattr(module, a) for a in attrs)
