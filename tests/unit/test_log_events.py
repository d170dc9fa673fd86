"""Every per-task event the sources log is in the vocabulary (``logs.TASK_EVENTS``).

The reverse (every vocabulary event is logged somewhere and documented) is
``tests/unit/test_metrics.py::test_every_vocabulary_event_is_logged_somewhere``.
"""

from __future__ import annotations

import re
from pathlib import Path

from taskflow_common.logs import TASK_EVENTS

REPO = Path(__file__).resolve().parents[2]

# A log call whose event names a task or an attempt: log.info("task_...", or over lines.
_PER_TASK = re.compile(r'\.(?:debug|info|warning|error|exception)\(\s*"((?:task|attempt)_\w+)"')
# The ingest API's task-event listener (LISTEN on the ``task_events`` channel) and its
# event streams log about the listener, not about one task's life: service-level events.
_LISTENER = re.compile(r"^task_events?_")


def logged_events() -> dict[str, list[str]]:
    """``{event: [files logging it]}`` for every per-task event in libs/ and services/."""
    found: dict[str, list[str]] = {}
    for folder in ("libs", "services"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for event in _PER_TASK.findall(path.read_text(encoding="utf-8")):
                found.setdefault(event, []).append(str(path.relative_to(REPO)))
    return found


def test_the_scan_finds_the_known_events() -> None:
    found = logged_events()
    assert {"task_submitted", "task_cancelled", "task_retried", "attempt_started"} <= set(found)


def test_every_logged_task_event_is_in_the_vocabulary() -> None:
    missing = {
        event: files
        for event, files in logged_events().items()
        if event not in TASK_EVENTS and not _LISTENER.match(event)
    }
    assert missing == {}
