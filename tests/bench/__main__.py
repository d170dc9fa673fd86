"""``python -m tests.bench`` (``make bench``): see :mod:`tests.bench.harness`."""

from __future__ import annotations

import sys

from tests.bench.harness import main

if __name__ == "__main__":
    sys.exit(main())
