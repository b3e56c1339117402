"""Differential conformance suite: any AdamP/SGDP implementation against the float64 reference.

Run it as ``pytest conformance --backend=NAME``; see ``docs/conformance.md``. This directory is
not an installed package: it is a pytest suite whose modules import one another.
"""
