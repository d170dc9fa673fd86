"""Entry point: ``taskflow-dispatcher`` / ``python -m taskflow_dispatcher``."""

from __future__ import annotations

from taskflow_common.lifecycle import run_service
from taskflow_dispatcher.dispatcher import serve
from taskflow_dispatcher.settings import DispatcherSettings


def main() -> int:
    """Run the dispatcher until SIGTERM/SIGINT; return the exit code."""
    return run_service("dispatcher", DispatcherSettings, serve)


if __name__ == "__main__":
    raise SystemExit(main())
