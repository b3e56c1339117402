"""The report: one row per trajectory test (optimizer, scenario, dtype) of the backend run.

Columns: examples run, share of examples reaching each branch of the projection (channel view,
layer view, no projection), comparisons ended by a legitimate near-tie divergence ("ties") or
by a reference value outside the dtype's range ("ovfl", float16), largest absolute and
relative errors against the float64 reference, and the verdict pytest gave the test. The
relative error is ``|x - r| / (R + (atol / rtol) S)`` in the terms of ``tolerances.py``: a value
passes when it is at most rtol.
"""

from __future__ import annotations

import datetime
import json
import platform
from dataclasses import asdict, dataclass, field

import pytest

BRANCHES = ("channel", "layer", "none")
MIN_BRANCH_SHARE = 0.20
MIN_EXAMPLES_FOR_COVERAGE = 10


@dataclass
class Row:
    optimizer: str
    scenario: str
    dtype: str
    examples: int = 0
    reached: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BRANCHES, 0))
    decisions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BRANCHES, 0))
    ties: int = 0
    overflows: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0
    verdict: str = "not run"

    def share(self, branch: str) -> float:
        return self.reached[branch] / self.examples if self.examples else 0.0


class Recorder:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.other: dict[str, str] = {}
        self.backend = self.version = self.device = "?"

    def start(self, backend: str, version: str, device: str) -> None:
        self.backend, self.version, self.device = backend, version, device

    def add(self, nodeid: str, optimizer: str, scenario: str, dtype: str, stats) -> None:
        row = self.rows.setdefault(nodeid, Row(optimizer, scenario, dtype))
        row.examples += 1
        for b in stats.branches:
            row.reached[b] += 1
        for b, n in stats.decisions.items():
            row.decisions[b] += n
        row.ties += stats.ties
        row.overflows += stats.overflows
        row.max_abs = max(row.max_abs, stats.max_abs)
        row.max_rel = max(row.max_rel, stats.max_rel)

    def outcome(self, report: pytest.TestReport) -> None:
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            if hasattr(report, "wasxfail"):
                verdict = "xfail (known)" if report.outcome == "skipped" else "XPASS"
            else:
                verdict = {"passed": "pass", "failed": "FAIL", "skipped": "skip"}[report.outcome]
            if report.nodeid in self.rows:
                self.rows[report.nodeid].verdict = verdict
            elif "test_trajectory[" in report.nodeid:
                name = report.nodeid.split("[", 1)[1].rstrip("]")
                scenario, _, dtype = name.rpartition("-")
                row = Row(scenario.split("-")[0], scenario, dtype, verdict=verdict)
                self.rows[report.nodeid] = row
            else:
                self.other[report.nodeid] = verdict

    def coverage(self) -> tuple[int, dict[str, float]]:
        """Examples of the passing trajectory tests, and the share reaching each branch."""
        rows = [r for r in self.rows.values() if r.verdict == "pass"]
        n = sum(r.examples for r in rows)
        return n, {b: (sum(r.reached[b] for r in rows) / n if n else 0.0) for b in BRANCHES}

    def coverage_failures(self) -> list[str]:
        """Branches reached in fewer than 20% of the session's examples (checked from 10 on)."""
        n, shares = self.coverage()
        if n < MIN_EXAMPLES_FOR_COVERAGE:
            return []
        return [
            f"branch {b!r} reached in {shares[b]:.0%} of {n} examples (< {MIN_BRANCH_SHARE:.0%})"
            for b in BRANCHES
            if shares[b] < MIN_BRANCH_SHARE
        ]

    def table(self) -> list[str]:
        head = (
            f"{'backend':<18} {'optimizer':<6} {'scenario':<22} {'dtype':<9} {'device':<6} "
            f"{'examples':>8} {'channel':>7} {'layer':>6} {'none':>5} {'ties':>4} {'ovfl':>4} "
            f"{'max abs err':>11} {'max rel err':>11}  verdict"
        )
        lines = [head, "-" * len(head)]
        for row in sorted(self.rows.values(), key=lambda r: (r.scenario, r.dtype)):
            lines.append(
                f"{self.backend:<18} {row.optimizer:<6} {row.scenario:<22} {row.dtype:<9} "
                f"{self.device:<6} {row.examples:>8} {row.share('channel'):>7.0%} "
                f"{row.share('layer'):>6.0%} {row.share('none'):>5.0%} {row.ties:>4} "
                f"{row.overflows:>4} "
                f"{row.max_abs:>11.2e} {row.max_rel:>11.2e}  {row.verdict}"
            )
        n, shares = self.coverage()
        lines.append(
            f"branch coverage over {n} examples of passing tests: "
            + ", ".join(f"{b} {shares[b]:.0%}" for b in BRANCHES)
            + f" (each must be >= {MIN_BRANCH_SHARE:.0%})"
        )
        counts: dict[str, int] = {}
        for v in self.other.values():
            counts[v] = counts.get(v, 0) + 1
        if counts:
            lines.append(
                "other tests (contracts, invalid hyperparameters, strategies, command, self-test): "
                + ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
            )
        return lines

    def write_json(self, path: str, config: pytest.Config) -> None:
        from hypothesis import settings

        c = config._conformance
        doc = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backend": self.backend,
            "version": self.version,
            "device": self.device,
            "device_name": getattr(c["driver"], "device_name", platform.processor() or "cpu"),
            "dtypes": list(c["dtypes"]),
            "hypothesis_profile": settings.get_current_profile_name(),
            "python": platform.python_version(),
            "rows": [{"nodeid": k, **asdict(r)} for k, r in self.rows.items()],
            "other": self.other,
            "coverage": dict(zip(("examples", "shares"), self.coverage(), strict=True)),
            "coverage_failures": self.coverage_failures(),
        }
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)


RECORDER = Recorder()


def markdown(paths: list[str]) -> str:
    """A Markdown summary of JSON reports (``--report``), e.g. those of a GPU run."""
    docs = []
    for p in paths:
        with open(p) as f:
            docs.append(json.load(f))
    first = docs[0]
    lines = [
        "# Conformance report",
        "",
        f"Date: {first['date']}. Device: {first.get('device_name', '?')}. "
        f"Python {first['python']}. Profile: {first['hypothesis_profile']}"
        + (" (TF32 off)." if first["device"] == "gpu" else "."),
        "",
        "| backend | version | scenario | dtype | examples | ties | max abs err | max rel err "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in docs:
        for r in sorted(d["rows"], key=lambda r: (r["scenario"], r["dtype"])):
            lines.append(
                f"| {d['backend']} | {d['version']} | {r['scenario']} | {r['dtype']} | "
                f"{r['examples']} | {r['ties']} | {r['max_abs']:.2e} | {r['max_rel']:.2e} | "
                f"{r['verdict']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    print(markdown(sys.argv[1:]), end="")
