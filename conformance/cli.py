"""``adamp-conformance``: the suite from anywhere, as ``pytest`` on this package's folder.

``adamp-conformance --backend=NAME [--device=...] [--dtype=...] [--report=F.json]
[--xfails-file=F] [--hypothesis-profile=ci|thorough|gpu] [pytest options]`` is
``pytest <this folder> ...`` with the cache plugin off (the folder may be read-only, e.g. in
site-packages). Every option is pytest's or the suite's own (``conftest.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import pytest

    here = Path(__file__).resolve().parent
    args = list(sys.argv[1:] if argv is None else argv)
    return int(pytest.main([str(here), "-p", "no:cacheprovider", f"--rootdir={here}", *args]))


if __name__ == "__main__":
    sys.exit(main())
