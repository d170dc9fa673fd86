"""The REST calls as data: what to send and how to read the answer (no I/O here).

Each function returns a :class:`Call`; :class:`~taskflow_client.async_client.AsyncClient` and
:class:`~taskflow_client.sync_client.Client` send it with httpx's async or sync client and
hand the response to :func:`finish`. Keeping requests and parsing here means the two
clients differ only in ``await``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import httpx

from taskflow_client import errors
from taskflow_client.models import DeadLetter, Execution, NewTask, Task

T = TypeVar("T")

API_PREFIX = "/api/v1"
MAX_WAIT_S = 60
"""Longest ``?wait=`` the ingest API accepts for one request (seconds)."""
MIN_WAIT_S = 0.01
"""Below this much time left, ``wait`` stops long-polling and reads the task once."""
MAX_PAGE_SIZE = 200
"""Largest ``limit`` the list endpoints accept."""
POLL_FLOOR_S = 0.5
"""Pause between wait requests when a server answers early without a terminal state
(an API without long polling): bounds the request rate to 2/s instead of a busy loop."""
EARLY_S = 0.1
"""A long poll that returns this much before its wait ended counts as answered early."""

TaskId = str | uuid.UUID
"""A task id as a UUID or its string form."""


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a listing: ``items`` in server order, ``next_cursor`` None on the last."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One HTTP request and the reader of its JSON answer.

    ``service`` picks the base URL (ingest API or dlq-monitor); ``path`` is below
    ``/api/v1``; ``params`` may repeat a name; ``extra_timeout_s`` is added to the read
    timeout (a long poll holds the response that long on purpose).
    """

    method: Literal["GET", "POST", "PATCH", "DELETE"]
    service: Literal["api", "dlq"]
    path: str
    read: Callable[[Any], T]
    params: Sequence[tuple[str, str]] = ()
    json: Any = None
    headers: Mapping[str, str] | None = None
    extra_timeout_s: float = 0.0


def base_url(url: str) -> str:
    """Normalise a service URL to ``scheme://host:port[/prefix]`` ending in ``/api/v1``.

    ``http://h:8080``, ``http://h:8080/`` and ``http://h:8080/api/v1`` all give
    ``http://h:8080/api/v1``.
    """
    root = url.rstrip("/")
    root = root.removesuffix(API_PREFIX)
    return root + API_PREFIX


def task_id(value: TaskId) -> str:
    """Return the canonical string of a task id; raise ValidationFailed ``invalid_id``."""
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        raise errors.ValidationFailed(
            "invalid_id", f"task id must be a UUID, not {str(value)[:60]!r}"
        ) from None


def finish(call: Call[T], resp: httpx.Response) -> T:
    """Return ``call.read`` of the response's JSON; raise the problem as an exception.

    A 204 (no content) is read as None. Raises
    :class:`~taskflow_client.errors.TaskFlowAPIError` (or a subclass by status) for
    4xx/5xx, and one with code ``invalid_response`` for a 2xx body that is not the
    documented JSON.
    """
    if resp.status_code >= 400:
        raise errors.from_response(resp)
    try:
        return call.read(None if resp.status_code == 204 else resp.json())
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise errors.invalid_response(exc, str(resp.request.url)) from exc


# -- readers ---------------------------------------------------------------------------


def _task(doc: Any) -> Task:
    return Task.from_json(doc["task"])


def _items(doc: Any) -> list[Task]:
    return [Task.from_json(item["task"]) for item in doc["items"]]


def _task_page(doc: Any) -> Page[Task]:
    return Page([Task.from_json(t) for t in doc["items"]], doc.get("next_cursor"))


def _executions(doc: Any) -> list[Execution]:
    return [Execution.from_json(e) for e in doc["items"]]


def _dead_letter_page(doc: Any) -> Page[DeadLetter]:
    return Page([DeadLetter.from_json(d) for d in doc["items"]], doc.get("next_cursor"))


# -- calls -----------------------------------------------------------------------------


def submit(new: NewTask) -> Call[Task]:
    """``POST /tasks`` (201, or 200 when an ``Idempotency-Key`` replays)."""
    headers = {"Idempotency-Key": new.idempotency_key} if new.idempotency_key else None
    return Call("POST", "api", "/tasks", _task, json=new.body(with_key=False), headers=headers)


def submit_batch(news: Iterable[NewTask]) -> Call[list[Task]]:
    """``POST /tasks/batch``: all tasks in one transaction, answered in order."""
    body = {"tasks": [n.body(with_key=True) for n in news]}
    return Call("POST", "api", "/tasks/batch", _items, json=body)


def get(tid: TaskId, *, wait_s: float | None = None) -> Call[Task]:
    """``GET /tasks/{id}``; with ``wait_s`` (<= 60) the server holds it until terminal.

    The wait is sent in whole milliseconds (``?wait=1500ms``).
    """
    params: tuple[tuple[str, str], ...] = ()
    extra = 0.0
    if wait_s is not None:
        params = (("wait", f"{round(wait_s * 1000)}ms"),)
        extra = wait_s
    return Call("GET", "api", f"/tasks/{task_id(tid)}", _task, params=params, extra_timeout_s=extra)


def wait_step(remaining_s: float) -> float | None:
    """How long the next ``?wait=`` may be, in seconds: ``remaining_s`` capped at 60.

    None when less than :data:`MIN_WAIT_S` is left: a plain GET then ends the wait.
    """
    if remaining_s < MIN_WAIT_S:
        return None
    return min(float(MAX_WAIT_S), remaining_s)


def poll_pause(remaining_s: float) -> float:
    """Seconds to pause before polling again: :data:`POLL_FLOOR_S`, never past the deadline."""
    return max(0.0, min(POLL_FLOOR_S, remaining_s))


def list_tasks(
    *,
    status: str | None,
    type: str | None,
    priority: str | None,
    tags: Mapping[str, str] | None,
    limit: int,
    cursor: str | None,
    schedule: str | None = None,
) -> Call[Page[Task]]:
    """``GET /tasks`` with equality filters, ``tag=k:v`` per tag, and a page cursor."""
    params = query(status=status, type=type, priority=priority, schedule=schedule, cursor=cursor)
    params += [("tag", f"{k}:{v}") for k, v in (tags or {}).items()]
    params.append(("limit", str(limit)))
    return Call("GET", "api", "/tasks", _task_page, params=params)


def executions(tid: TaskId) -> Call[list[Execution]]:
    """``GET /tasks/{id}/executions`` (ordered by attempt)."""
    return Call("GET", "api", f"/tasks/{task_id(tid)}/executions", _executions)


def cancel(tid: TaskId) -> Call[Task]:
    """``POST /tasks/{id}/cancel`` (409 ``invalid_state`` once terminal)."""
    return Call("POST", "api", f"/tasks/{task_id(tid)}/cancel", _task)


def retry(tid: TaskId) -> Call[Task]:
    """``POST /tasks/{id}/retry`` (failed or cancelled tasks only, else 409)."""
    return Call("POST", "api", f"/tasks/{task_id(tid)}/retry", _task)


def dead_letters(
    *,
    status: str | None,
    type: str | None,
    q: str | None,
    limit: int,
    cursor: str | None,
) -> Call[Page[DeadLetter]]:
    """dlq-monitor ``GET /dlq`` (newest first)."""
    params = query(status=status, type=type, q=q, cursor=cursor)
    params.append(("limit", str(limit)))
    return Call("GET", "dlq", "/dlq", _dead_letter_page, params=params)


def replay(tid: TaskId) -> Call[Task]:
    """dlq-monitor ``POST /dlq/{task_id}/replay``: queue the dead-lettered task again."""
    return Call("POST", "dlq", f"/dlq/{task_id(tid)}/replay", _task)


def query(**values: str | None) -> list[tuple[str, str]]:
    """The query parameters among ``values`` that are set, in order."""
    return [(k, v) for k, v in values.items() if v is not None]


def page_sizes(limit: int | None, page_size: int) -> tuple[int, int | None]:
    """Check ``page_size`` (1..200) and ``limit`` (None or >= 0); return them.

    Raises ``ValueError`` naming the argument.
    """
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}, not {page_size}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, not {limit}")
    return page_size, limit
