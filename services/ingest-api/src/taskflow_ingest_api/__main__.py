"""``python -m taskflow_ingest_api`` / ``taskflow-ingest-api``: run the API until SIGTERM.

Exit codes (from :func:`taskflow_common.lifecycle.run_service`): 0 after a clean stop,
2 for a malformed variable (named on stderr), 1 when the service cannot start.
"""

from __future__ import annotations

import sys

from taskflow_common.lifecycle import run_service
from taskflow_ingest_api.app import serve
from taskflow_ingest_api.settings import ApiSettings


def main() -> int:
    """Run the ingest API; return the process exit code."""
    return run_service("ingest-api", ApiSettings, serve)


if __name__ == "__main__":
    sys.exit(main())
