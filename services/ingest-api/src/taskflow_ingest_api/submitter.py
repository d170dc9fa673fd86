"""Group commit of single submits: concurrent ``POST /api/v1/tasks`` share one INSERT.

A burst of single-task requests would otherwise cost one statement, one commit (a WAL
flush) and one pool checkout each. :class:`GroupSubmitter` queues them instead: while
one group's INSERT is in flight, requests that arrive wait in the queue; when it
returns, everything queued (up to :data:`~taskflow_common.store.submissions.MAX_BATCH`
tasks and ``max_bytes`` of request bodies) goes into the next statement. This is
natural batching: an idle API sends each request's insert at once (no timer, no added
latency), a busy one writes as many rows per commit as arrived during the previous one.

Guarantees, per request: its future resolves only after the statement holding its row
committed, with its own row; it carries its own trace parent into its row. A group the
database refuses (a bad row: a CHECK the validation missed, say) is retried one
request per statement, so one bad request never fails the others, and each gets its own
verdict. An outage (:class:`~taskflow_common.errors.UnavailableError`: no connection
within ``DB_ACQUIRE_TIMEOUT``, or the statement timed out) fails the whole group at once
(each request answers 503 ``unavailable``) instead of being retried row by row.

The flusher sends one group per pass of :func:`~taskflow_common.loops.run_loop` (loop
``group_submit``): a pass that raises anything else (a bug in the bookkeeping) fails only
that group's requests, is logged with its class and counted, and the next group goes out
after the loop's backoff.

Requests with an ``Idempotency-Key`` do not come here: their conflict handling
(:func:`~taskflow_common.store.submissions.submit`) needs a statement of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from taskflow_common.db import TRANSIENT_ERRORS as PG_ERRORS
from taskflow_common.db import Database
from taskflow_common.errors import UnavailableError
from taskflow_common.logs import get_logger
from taskflow_common.loops import LoopErrors, run_loop
from taskflow_common.spec import TaskSpec
from taskflow_common.store import submissions

log = get_logger(__name__)


@dataclass(slots=True)
class _Item:
    spec: TaskSpec
    trace_parent: str | None
    size: int
    done: asyncio.Future[tuple[asyncpg.Record, int]]


class GroupSubmitter:
    """Coalesce concurrent single submits into multi-row INSERTs (see the module doc).

    ``database`` returns the open pool (it raises :class:`UnavailableError` before
    start-up); ``max_bytes`` bounds the request bodies that go into one statement
    (bytes; the batch endpoint's ``MAX_BATCH_BODY_BYTES`` is a natural choice), and
    ``max_rows`` the rows (1..``MAX_BATCH``); ``errors`` counts failed flusher passes.
    One event loop only.
    """

    def __init__(
        self,
        database: Callable[[], Database],
        *,
        max_bytes: int,
        max_rows: int = submissions.MAX_BATCH,
        errors: LoopErrors | None = None,
    ) -> None:
        if not 1 <= max_rows <= submissions.MAX_BATCH:
            raise ValueError(f"max_rows must be 1..{submissions.MAX_BATCH}")
        self._database = database
        self._max_bytes = max_bytes
        self._max_rows = max_rows
        self._errors = errors
        self._queue: deque[_Item] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0
        """Statements sent so far (for tests and diagnostics)."""

    async def submit(
        self, spec: TaskSpec, trace_parent: str | None, size: int = 0
    ) -> tuple[asyncpg.Record, int]:
        """Insert ``spec``'s task; return ``(row, group_size)`` once its row committed.

        ``size`` is the request body's length in bytes (counts against ``max_bytes``);
        ``group_size`` is how many tasks the statement that wrote it held. Raises what
        the insert raised: :class:`UnavailableError` for an outage, a driver error for
        a row the database refused.
        """
        if spec.idempotency_key is not None:
            raise ValueError("keyed submits take the single path (submissions.submit)")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[asyncpg.Record, int]] = loop.create_future()
        self._queue.append(_Item(spec, trace_parent, size, done))
        flusher = self._flusher
        # A flusher left behind by a loop that was closed under it (a test client that
        # runs each request in a loop of its own) will never run again: start another.
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            self._flusher = asyncio.create_task(self._flush(), name="group-submit")
        # A cancelled request leaves its item queued; the flusher skips it if it has
        # not been sent yet (else its row commits unanswered, as a cancelled single
        # insert's would).
        return await done

    async def _flush(self) -> None:
        """Send queued items group by group until the queue is empty."""
        empty = asyncio.Event()

        async def one_group() -> None:
            if not self._queue:
                empty.set()
                return
            group = self._take()
            try:
                if group:
                    await self._write(group)
            except Exception as exc:
                # Whatever went wrong, nobody of this group waits for ever.
                for item in group:
                    _fail(item.done, exc)
                raise

        try:
            await run_loop("group_submit", one_group, empty, errors=self._errors)
        finally:
            if self._flusher is asyncio.current_task():
                self._flusher = None
            # Only reached with items left if this task was cancelled (loop shutdown).
            while self._queue:
                item = self._queue.popleft()
                _fail(item.done, UnavailableError("the API is shutting down"))

    def _take(self) -> list[_Item]:
        group: list[_Item] = []
        size = 0
        loop = asyncio.get_running_loop()
        while self._queue and len(group) < self._max_rows:
            item = self._queue[0]
            if group and size + item.size > self._max_bytes:
                break
            self._queue.popleft()
            # Its request was cancelled before we got to it, or it belongs to a loop
            # that is gone (nobody is waiting for the answer).
            if item.done.done() or item.done.get_loop() is not loop:
                continue
            group.append(item)
            size += item.size
        return group

    async def _write(self, group: list[_Item]) -> None:
        try:
            async with self._database().acquire() as conn:
                try:
                    rows = await submissions.submit_group(
                        conn, [i.spec for i in group], [i.trace_parent for i in group]
                    )
                except asyncpg.PostgresError as exc:
                    if len(group) == 1 or isinstance(exc, PG_ERRORS):
                        raise
                    # The database refused the group: find out whose row it was by
                    # sending each on its own, so each request gets its own verdict.
                    log.warning("group_submit_split", tasks=len(group), error=repr(exc))
                    await self._one_by_one(conn, group)
                    return
        except Exception as exc:
            # Acquire or statement failed for the whole group (an outage arrives as
            # UnavailableError, translated by Database.acquire): every request still
            # waiting shares the verdict.
            for item in group:
                _fail(item.done, exc)
            return
        except BaseException:
            for item in group:  # cancelled (loop shutdown): answer, then stop
                _fail(item.done, UnavailableError("the API is shutting down"))
            raise
        self.groups += 1
        for item, row in zip(group, rows, strict=True):
            if not item.done.done():
                item.done.set_result((row, len(group)))

    async def _one_by_one(self, conn: asyncpg.Connection, group: list[_Item]) -> None:
        """Insert each item of a refused group alone; a bad row fails only its request.

        A transient error (Postgres went away meanwhile) propagates: the caller then
        fails every item not yet answered.
        """
        for item in group:
            try:
                (row,) = await submissions.submit_group(conn, [item.spec], [item.trace_parent])
            except asyncpg.PostgresError as exc:
                if isinstance(exc, PG_ERRORS):
                    raise
                _fail(item.done, exc)
            else:
                self.groups += 1
                if not item.done.done():
                    item.done.set_result((row, 1))

    async def close(self) -> None:
        """Wait for the group in flight and everything queued (shutdown)."""
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await flusher


def _fail(done: asyncio.Future[tuple[asyncpg.Record, int]], exc: BaseException) -> None:
    """Fail one request's future (unless it was cancelled meanwhile).

    An outage gets a fresh :class:`UnavailableError` per request, so concurrent
    requests never raise (and extend the traceback of) one shared exception object.
    """
    if done.done():
        return
    if isinstance(exc, UnavailableError):
        own = UnavailableError(str(exc))
        own.__cause__ = exc.__cause__
        exc = own
    done.set_exception(exc)
