"""Entry point: ``taskflow-worker`` / ``python -m taskflow_worker``."""

from __future__ import annotations

from taskflow_common.lifecycle import run_service
from taskflow_worker.settings import WorkerSettings
from taskflow_worker.worker import serve


def main() -> int:
    """Run the worker until SIGTERM/SIGINT; return the exit code."""
    return run_service("worker", WorkerSettings, serve)


if __name__ == "__main__":
    raise SystemExit(main())
