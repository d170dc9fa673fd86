"""Entry point: ``taskflow-dlq-monitor`` / ``python -m taskflow_dlq_monitor``."""

from __future__ import annotations

from taskflow_common.lifecycle import run_service
from taskflow_dlq_monitor.service import main as serve
from taskflow_dlq_monitor.settings import DlqSettings


def main() -> int:
    """Run the dlq-monitor until SIGTERM/SIGINT; return the exit code."""
    return run_service("dlq-monitor", DlqSettings, serve)


if __name__ == "__main__":
    raise SystemExit(main())
