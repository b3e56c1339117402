"""Expected failures: files of test-id globs, each with its reason (``--xfails-file=PATH``).

Format, one entry per unindented line; ``#`` starts a comment line, blank lines are skipped::

    # comment
    test_trajectory[adamp*]  D5: eps is added before the bias correction
    test_rejects_invalid[*-lr]
        the reason may also go on the indented lines that follow

The pattern is matched against the test's name as pytest prints it (``test_trajectory[adamp-
float32]``), with ``*`` and ``?`` as wildcards and ``[`` ``]`` taken literally. Every matching
test becomes a strict expected failure: if it passes, the run fails, so a file stays a list of
demonstrated facts. A pattern that matches no test the backend can have is reported at the end
of the run (a typo, or a test that was renamed), in the manner of array-api-tests.

The deviations of the third-party targets the suite ships drivers for are in ``xfails/NAME.txt``
and apply to ``--backend=NAME`` without being named.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

BUILTIN = Path(__file__).resolve().parent / "xfails"


class XfailsError(ValueError):
    """A file that cannot be read or an entry without a reason."""


@dataclass(frozen=True)
class Xfail:
    pattern: str
    reason: str
    where: str  # "file:line", for messages


def matches(name: str, pattern: str) -> bool:
    """fnmatch with ``[`` and ``]`` taken literally (they delimit pytest's parameter ids)."""
    escaped = "".join({"[": "[[]", "]": "[]]"}.get(ch, ch) for ch in pattern)
    return fnmatch.fnmatchcase(name, escaped)


def parse_xfails(text: str, source: str) -> list[Xfail]:
    entries: list[list] = []  # [pattern, reason lines, line number]
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if not entries:
                raise XfailsError(f"{source}:{n}: indented reason line before any pattern")
            entries[-1][1].append(line.strip())
            continue
        pattern, _, reason = line.strip().partition(" ")
        entries.append([pattern, [reason.strip()] if reason.strip() else [], n])
    out = []
    for pattern, reason, n in entries:
        if not reason:
            raise XfailsError(f"{source}:{n}: {pattern!r} has no reason; write one after it")
        out.append(Xfail(pattern, " ".join(reason), f"{source}:{n}"))
    return out


def read_xfails(path: str | Path) -> list[Xfail]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise XfailsError(f"--xfails-file {path}: {e.strerror or e}") from e
    return parse_xfails(text, str(path))


def builtin_xfails(backend: str) -> list[Xfail]:
    """The shipped deviations of a built-in backend: xfails/BACKEND.txt, where there is one."""
    path = BUILTIN / f"{backend}.txt"
    return read_xfails(path) if path.is_file() else []
