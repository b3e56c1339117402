"""Differential conformance suite: any AdamP/SGDP implementation against the float64 reference.

Installed (``pip install "adamp-core[conformance]"``) this package is ``adamp_conformance`` and
runs as ``adamp-conformance --backend=NAME``; in a checkout of the repository it is the folder
``conformance/``, run as ``pytest conformance --backend=NAME``. See ``docs/conformance.md``.

A driver for an implementation the suite does not ship imports the interface from here, under
the installed name, which a checkout's editable install provides too::

    from adamp_conformance import Driver, Output, Problem

Modules inside the package import one another relatively, so the same files work under both
names.
"""

from __future__ import annotations

import sys

from .drivers import Driver, Output, Problem, ProblemGroup

__all__ = ["Driver", "Output", "Problem", "ProblemGroup"]

# In a checkout the folder is imported as ``conformance``; a driver written against the
# installed name must get this same module, not a second copy with its own Driver class.
sys.modules.setdefault("adamp_conformance", sys.modules[__name__])
