"""The installed name ``adamp_conformance`` in a checkout of the repository.

The editable install puts ``conformance/_checkout`` on ``sys.path`` (``dev-mode-dirs`` in
pyproject.toml), so ``import adamp_conformance`` works there as it does in an installed wheel.
This module hands over the checkout's ``conformance`` package itself: one module, one
``Driver`` class, whichever name is imported first. The wheel does not ship this folder.
"""

import sys

import conformance

sys.modules[__name__] = conformance
