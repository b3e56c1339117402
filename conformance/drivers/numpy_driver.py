"""The reference itself (``adamp_core``) run through the harness, in any dtype.

In float64 it must agree with the float64 reference to the last bit; in the other dtypes it
measures how far the reference's own low-precision path (D9) strays, which is what the
tolerance table's defaults are built on.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

import adamp_core

from . import Driver, Output, Problem, has_bfloat16


class NumpyDriver(Driver):
    name = "numpy"
    version = adamp_core.__version__
    default_channel_axis = 0
    channel_axes = None
    names = {"beta1": "betas[0]", "beta2": "betas[1]"}  # noqa: RUF012
    strided = True  # NumPy views with any strides are accepted by the reference
    complex_dtypes = ("complex64", "complex128")

    def dtypes(self) -> tuple[str, ...]:
        return ("float64", "float32", "float16", *(("bfloat16",) if has_bfloat16() else ()))

    # Mutants (conformance/mutants.py) override these two.
    def adamp_step(self, p, g, state, **hp):
        return adamp_core.adamp_step(p, g, state, **hp)

    def sgdp_step(self, p, g, state, **hp):
        return adamp_core.sgdp_step(p, g, state, **hp)

    def run(self, problem: Problem) -> list[list[Output]]:
        adamp = problem.optimizer == "adamp"
        init = adamp_core.adamp_init if adamp else adamp_core.sgdp_init
        step = self.adamp_step if adamp else self.sgdp_step
        hp: dict[int, tuple[dict[str, Any], int]] = {}
        for group in problem.groups:
            for i in group.indices:
                hp[i] = (group.hyperparams, group.channel_axis)
        params = list(problem.params)
        for i, layout in enumerate(problem.layouts):
            if layout == "strided" and params[i].ndim >= 2:  # same values, reversed strides
                params[i] = np.asfortranarray(params[i])
        states = [init(p) for p in params]
        out = []
        for grads in problem.grads:
            row = []
            for i, g in enumerate(grads):
                h, axis = hp[i]
                params[i], states[i] = step(params[i], g, states[i], channel_axis=axis, **h)
                s = states[i]._asdict()
                row.append(
                    Output(
                        params[i],
                        s if adamp else {"momentum_buffer": s["momentum_buffer"]},
                        dtype=params[i].dtype.name,
                    )
                )
            out.append(row)
        return out

    def run_rejected(self, problem: Problem):
        try:
            (outputs,) = self.run(dataclasses.replace(problem, grads=problem.grads[:1]))
        except Exception as e:  # the reference writes nothing: its steps return new arrays
            return e, [Output(p, {}) for p in problem.params]
        return None, outputs

    def construct(self, optimizer: str, hyperparams: dict[str, Any]) -> None:
        p = np.ones((2, 3))
        if optimizer == "adamp":
            self.adamp_step(p, p, adamp_core.adamp_init(p), **hyperparams)
        else:
            self.sgdp_step(p, p, adamp_core.sgdp_init(p), **hyperparams)
