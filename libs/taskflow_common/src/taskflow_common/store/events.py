"""Task events: what migrations 0002-0004 notify and how to read them.

Triggers send a notification on :data:`CHANNEL`, delivered at commit, per status change
of a task and per status change of an execution other than ``succeeded``. Execution
inserts and successes send none: they happen in the statement that changes the task's
status, whose notification covers them. The payload is plain text::

    task:<task id>:<status>:<version>
    execution:<task id>:<attempt>:<status>

It says which task changed and whether re-reading it is worth it; listeners read the
rows themselves (the payload is a hint, never the state to show).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from taskflow_common.store.rows import TERMINAL_STATUSES

CHANNEL = "taskflow_task_events"
"""LISTEN channel of task and execution changes (migrations 0002-0004)."""

EventKind = Literal["task", "execution"]


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One notification: ``kind`` task (``number`` = version) or execution (= attempt)."""

    kind: EventKind
    task_id: uuid.UUID
    status: str
    number: int

    @property
    def terminal(self) -> bool:
        """True for a task event whose status is completed, failed or cancelled."""
        return self.kind == "task" and self.status in TERMINAL_STATUSES

    @classmethod
    def parse(cls, payload: str) -> TaskEvent | None:
        """Decode a notification payload; None for anything this module did not write.

        Task payloads are ``task:<id>:<status>:<version>``; execution payloads are
        ``execution:<id>:<attempt>:<status>`` (the order the trigger writes them in).
        """
        parts = payload.split(":")
        if len(parts) != 4:
            return None
        kind, ident, third, fourth = parts
        try:
            task_id = uuid.UUID(ident)
            if kind == "task":
                return cls("task", task_id, third, int(fourth))
            if kind == "execution":
                return cls("execution", task_id, fourth, int(third))
        except ValueError:
            return None
        return None
