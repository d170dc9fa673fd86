"""TaskFlow's Python client: typed REST clients, transactional enqueue and the CLI.

- :class:`AsyncClient` / :class:`Client`: the ingest API and dlq-monitor over HTTP
  (:mod:`taskflow_client.async_client`, :mod:`taskflow_client.sync_client`); results
  are :class:`Task`, :class:`Execution`, :class:`DeadLetter`, :class:`Schedule`; errors derive from
  :class:`TaskFlowAPIError`.
- ``taskflow_client.enqueue.enqueue(conn, ...)``: create a task inside your own asyncpg
  transaction (needs the ``enqueue`` extra; not imported here).
- ``taskflow``: the command line (:mod:`taskflow_client.cli`).
"""

from __future__ import annotations

from taskflow_client.async_client import AsyncClient
from taskflow_client.errors import (
    Conflict,
    FieldError,
    NotFound,
    TaskFlowAPIError,
    Unavailable,
    ValidationFailed,
)
from taskflow_client.models import (
    TERMINAL_STATUSES,
    DeadLetter,
    Execution,
    NewTask,
    Schedule,
    Task,
)
from taskflow_client.schedule_calls import NewSchedule
from taskflow_client.sync_client import Client

__all__ = [
    "TERMINAL_STATUSES",
    "AsyncClient",
    "Client",
    "Conflict",
    "DeadLetter",
    "Execution",
    "FieldError",
    "NewSchedule",
    "NewTask",
    "NotFound",
    "Schedule",
    "Task",
    "TaskFlowAPIError",
    "Unavailable",
    "ValidationFailed",
]
