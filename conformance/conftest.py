"""Options, profiles, header, expected failures, branch coverage and the report.

``pytest conformance --backend=NAME [--device=cpu|cuda|gpu] [--dtype=a,b] [--report=F.json]
[--xfails-file=F]`` (installed: ``adamp-conformance`` with the same options)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from . import drivers
from .report import RECORDER
from .strategies import DTYPES, INVALID_ARGUMENTS, SCENARIOS
from .xfails import XfailsError, builtin_xfails, matches, read_xfails

_COMMON = {
    "deadline": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
# ci: derandomised, sized so that every CPU backend runs within about a minute on 2 cores; the
# shrink phase is left out (a failing example is printed as found, with its repro command).
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("CONFORMANCE_CI_EXAMPLES", "30")),
    derandomize=True,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    **_COMMON,
)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
settings.register_profile("gpu", max_examples=60, derandomize=True, database=None, **_COMMON)
settings.load_profile("ci")

_DEVICES = ("cpu", "cuda", "gpu")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance")
    group.addoption(
        "--backend",
        default=None,
        help="implementation under test: " + ", ".join(drivers.BACKENDS) + ", or module:attribute",
    )
    group.addoption("--device", default="cpu", help="cpu, cuda or gpu (cuda and gpu are the same)")
    group.addoption("--dtype", default=None, help="comma-separated dtypes (default: all supported)")
    group.addoption("--report", default=None, help="write the report table as JSON to this file")
    group.addoption(
        "--xfails-file",
        action="append",
        default=[],
        metavar="PATH",
        help="expected failures: test-id globs with a reason each (strict; repeatable)",
    )


@pytest.hookimpl(trylast=True)  # after hypothesis has loaded --hypothesis-profile
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(  # keras 3.15 on torch, under NumPy 2
        "filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword"
    )
    name = config.getoption("--backend")
    device = config.getoption("--device")
    if device not in _DEVICES:
        raise pytest.UsageError(f"--device must be one of {', '.join(_DEVICES)} (got {device!r})")
    device = "gpu" if device == "cuda" else device
    try:
        driver = drivers.load(name)
        driver.setup(device)
    except (drivers.BackendError, RuntimeError) as e:
        raise pytest.UsageError(str(e)) from e
    supported = tuple(driver.dtypes())
    chosen = config.getoption("--dtype")
    dtypes = supported if not chosen else tuple(d.strip() for d in chosen.split(","))
    bad = [d for d in dtypes if d not in supported]
    if bad:
        raise pytest.UsageError(
            f"--dtype {','.join(bad)} not supported by {name} on {device}; "
            f"choose from: {', '.join(supported)} (all dtypes: {', '.join(DTYPES)})"
        )
    try:
        xfails = (builtin_xfails(name) if name in drivers.BACKENDS else []) + [
            e for path in config.getoption("--xfails-file") for e in read_xfails(path)
        ]
    except XfailsError as e:
        raise pytest.UsageError(str(e)) from e
    config._conformance = {
        "backend": name,
        "driver": driver,
        "device": device,
        "dtypes": dtypes,
        "xfails": xfails,
    }
    cap = getattr(driver, "ci_max_examples", None)
    if cap and settings.get_current_profile_name() == "ci":
        # Frameworks that compile per shape (JAX) run fewer examples per test in ci, so that
        # every backend fits the ci budget; test modules are imported after this point.
        settings.register_profile("ci", parent=settings.get_profile("ci"), max_examples=cap)
        settings.load_profile("ci")
    RECORDER.start(name, driver.version, device)


def pytest_report_header(config: pytest.Config) -> list[str]:
    c = config._conformance
    profile = settings.get_current_profile_name()
    seed = config.getoption("hypothesis_seed", None)
    s = settings()
    seed_text = (
        "derandomized" if s.derandomize else f"seed {seed if seed is not None else 'random'}"
    )
    return [
        f"conformance: backend {c['backend']} {c['driver'].version} ({c['driver'].name}), "
        f"device {c['device']}, dtypes {', '.join(c['dtypes'])}",
        f"conformance: hypothesis profile {profile} (max_examples {s.max_examples}, {seed_text})",
    ]


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # The mutation self-test and the strategies' own tests need no framework: they run with
    # --backend=numpy only.
    if collection_path.name in ("test_mutants.py", "test_strategies.py", "test_suite.py"):
        return config._conformance["backend"] != "numpy"
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    c = metafunc.config._conformance
    if "scenario" in metafunc.fixturenames:
        params = []
        for name, sc in SCENARIOS.items():
            for dtype in c["dtypes"]:
                marks = []
                if sc.strided and not c["driver"].strided:
                    marks.append(pytest.mark.skip(reason=f"{c['backend']} has no strided tensors"))
                # numpy runs them densely: a check of the scenario's own construction.
                if sc.sparse and c["driver"].sparse_gradients != "rows" and c["backend"] != "numpy":
                    marks.append(
                        pytest.mark.skip(reason=f"{c['backend']} takes no sparse gradient type")
                    )
                params.append(pytest.param(name, dtype, marks=marks, id=f"{name}-{dtype}"))
        metafunc.parametrize(("scenario", "dtype"), params)
    if "invalid_argument" in metafunc.fixturenames:
        metafunc.parametrize(
            ("optimizer", "invalid_argument"),
            [(o, a) for o, args in INVALID_ARGUMENTS.items() for a in args],
            ids=[f"{o}-{a}" for o, args in INVALID_ARGUMENTS.items() for a in args],
        )


def _possible_names(c, items: list[pytest.Item]) -> set[str]:
    """Names the collected tests can have with any dtype the backend supports (an entry for
    float16 is not stale because this run chose --dtype=float32)."""
    names = {i.name for i in items}
    for name in list(names):
        for d in c["dtypes"]:
            if f"-{d}]" in name or f"[{d}]" in name:
                names |= {
                    name.replace(f"-{d}]", f"-{o}]").replace(f"[{d}]", f"[{o}]")
                    for o in c["driver"].dtypes()
                }
    return names


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselect: staleness is judged on every test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    c = config._conformance
    names = _possible_names(c, items)
    for entry in c["xfails"]:
        if not any(matches(n, entry.pattern) for n in names):
            warnings.warn(f"xfail {entry.pattern!r} ({entry.where}) matches no test", stacklevel=1)
            c.setdefault("stale", []).append(entry)
    for item in items:
        reasons = [e.reason for e in c["xfails"] if matches(item.name, e.pattern)]
        if reasons:
            item.add_marker(pytest.mark.xfail(strict=True, reason="; ".join(reasons)))


@pytest.fixture(scope="session")
def backend(pytestconfig: pytest.Config) -> str:
    return pytestconfig._conformance["backend"]


@pytest.fixture(scope="session")
def driver(pytestconfig: pytest.Config):
    return pytestconfig._conformance["driver"]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    RECORDER.outcome(report)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    c = getattr(config, "_conformance", None)
    if c is None:
        return
    tr = terminalreporter
    tr.section("conformance report")
    for line in pytest_report_header(config):  # also under -q, which hides the header
        tr.write_line(line)
    for line in RECORDER.table():
        tr.write_line(line)
    for entry in c.get("stale", []):
        tr.write_line(f"WARNING: xfail {entry.pattern!r} ({entry.where}) matches no test")
    for line in RECORDER.coverage_failures():
        tr.write_line(f"COVERAGE: {line}", red=True)
    path = config.getoption("--report")
    if path:
        RECORDER.write_json(path, config)
        tr.write_line(f"report written to {path}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if getattr(session.config, "_conformance", None) and RECORDER.coverage_failures():
        if exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
