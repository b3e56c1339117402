"""``python -m adamp_conformance`` (``python -m conformance`` in a checkout): see ``cli``."""

import sys

from .cli import main

sys.exit(main())
