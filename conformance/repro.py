"""Replays one case step by step: ``python -m adamp_conformance.repro --backend=NAME "Case(...)"``
(in a checkout: ``python -m conformance.repro``; the failure prints the right one).

Paste the ``Case(...)`` a failure printed. Prints, per step and parameter, the reference's
decision and margins and the largest error of the parameter, then the verdict of the full
check (the same ``harness.check_case`` the suite runs).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import adamp_core

from . import drivers
from .harness import ConformanceFailure, check_case, prepare
from .strategies import Case, Group, ParamSpec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, help=", ".join(drivers.BACKENDS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("case", help="Case(...) as printed by a failure")
    args = parser.parse_args(argv)
    case = eval(args.case, {"Case": Case, "Group": Group, "ParamSpec": ParamSpec})
    driver = drivers.load(args.backend)
    driver.setup("gpu" if args.device == "cuda" else args.device)
    prepared = prepare(case)
    outputs = driver.run(prepare(case).problem)
    for k in range(case.steps):
        for i, out in enumerate(outputs[k]):
            ref = prepared.reference[k][i][0]
            before = prepared.problem.params[i] if k == 0 else prepared.reference[k - 1][i][0]
            hp = prepared.hp[i]
            d = adamp_core.decide(
                np.asarray(before, np.float64),
                prepared.problem.grads[k][i].astype(np.float64),
                delta=hp["delta"],
                eps=hp["eps"],
                channel_axis=prepared.axes[i],
            )
            err = np.abs(np.asarray(out.param, np.float64) - ref)
            print(
                f"step {k + 1} param {i} shape {ref.shape}: reference view {d.view}, margins "
                f"{tuple(round(m, 6) for m in d.margins)}, max |param error| "
                f"{float(err.max(initial=0.0)):.3g}"
            )
    try:
        stats = check_case(driver, args.backend, case)
    except ConformanceFailure as e:
        print(f"FAIL\n{e}")
        return 1
    print(f"PASS (branches {sorted(stats.branches)}, near-tie divergences {stats.ties})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
