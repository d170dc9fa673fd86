"""Batched completions: record many successful attempts in one statement, then ack them.

A no-op task costs the worker two statements if each attempt is recorded alone (the
claim and the completion). Successful outcomes are instead handed to a
:class:`Completions` writer, which gathers them for at most ``linger_s`` seconds (2 ms
by default), or until every attempt still running in the process has reported, and
writes them with one fenced statement (:func:`~taskflow_common.store.attempts.succeed_many`).

Only after that statement commits is each message acked: a plain ``ack()`` per
message, then the attempts' slots are freed, and one ``flush()`` of the connection (a
PING/PONG) per batch confirms that the server took the acks; a failed confirmation is
logged (``settle_failed``). The slots do not wait for that confirmation: the fetch they
free sends its pull request on the same connection, behind the acks, so the server
reads the acks first anyway. While the worker drains for shutdown (``confirm_acks``),
each ack is instead confirmed by JetStream itself (``ack_sync``) before its slot is
freed, so nothing is left ack-pending when the process exits. An ack lost anyway only
means a redelivery, which the fenced claim refuses (STACK-FACTS: the database fence,
not the ack confirmation, is what prevents double runs).

Postgres refuses a whole statement when it refuses one row (a ``\\u0000`` in a result's
JSON is a ``DataError``). The writer then falls back to one statement per row for that
batch, so each attempt gets its own verdict and one unstorable result fails only its
own attempt (:class:`UnstorableResult`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
from nats.aio.msg import Msg

from taskflow_common.bus import Bus
from taskflow_common.db import Database
from taskflow_common.logs import get_logger
from taskflow_common.retry import OUTAGE
from taskflow_common.store import attempts
from taskflow_worker.delivery import settle

log = get_logger(__name__)

REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.exceptions.ProgramLimitExceededError,
)
"""Errors by which Postgres refuses a value (not an outage): the row can never be stored."""


class UnstorableResult(Exception):
    """Postgres refused this attempt's result; ``__cause__`` is its error."""


@dataclass(eq=False)
class _Pending:
    task_id: uuid.UUID
    attempt: int
    result_json: str
    msg: Msg
    done: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Completions:
    """Gathers successful outcomes, writes each batch in one statement, acks after commit.

    ``waiting`` returns how many attempts of this process may still report an outcome
    (running, or finished and not yet recorded); a batch is written as soon as all of
    them are in it, else after ``linger_s`` seconds. Batches are written one at a time.
    """

    def __init__(
        self,
        db: Database,
        bus: Bus,
        waiting: Callable[[], int],
        linger_s: float = 0.002,
    ) -> None:
        self.db = db
        self.bus = bus
        self.waiting = waiting
        self.linger_s = linger_s
        self.confirm_acks = False
        """Set while draining for shutdown: every ack is confirmed by JetStream."""
        self._buffer: list[_Pending] = []
        self._writing = 0
        self._more = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._confirming: asyncio.Task[None] | None = None
        self._unconfirmed = False

    async def succeed(self, task_id: uuid.UUID, attempt: int, result_json: str, msg: Msg) -> bool:
        """Record the success of ``attempt`` and ack ``msg`` after the commit.

        Returns True when recorded, False when the attempt was fenced (the message is
        acked either way). Raises :class:`UnstorableResult` when Postgres refuses the
        result (``msg`` is not settled), or an outage error (``UnavailableError`` or an
        asyncpg/OS error; ``msg`` is not settled, the caller retries or naks).
        """
        item = _Pending(task_id, attempt, result_json, msg)
        self._buffer.append(item)
        self._more.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop())
        # The writer resolves the future; shield it so that cancelling one caller (it
        # is never done today) cannot cancel a batch others wait on.
        return await asyncio.shield(item.done)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._buffer:
            deadline = loop.time() + self.linger_s
            # Everyone who can still join is in the buffer: write now. Otherwise wait for
            # more, at most linger_s.
            while len(self._buffer) < self.waiting() - self._writing:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._more.clear()
                try:
                    await asyncio.wait_for(self._more.wait(), remaining)
                except TimeoutError:
                    break
            batch, self._buffer = self._buffer, []
            self._writing = len(batch)
            try:
                await self._write(batch)
            except BaseException as exc:  # a bug: never leave a caller waiting
                for p in batch:
                    if not p.done.done():
                        p.done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                log.error("completion_write_failed", error=f"{exc.__class__.__name__}: {exc}")
            finally:
                self._writing = 0

    async def _write(self, batch: list[_Pending]) -> None:
        verdicts: dict[_Pending, bool | BaseException] = {}
        rows = [(p.task_id, p.attempt, p.result_json) for p in batch]
        try:
            async with self.db.acquire() as conn:
                try:
                    recorded = await attempts.succeed_many(conn, rows)
                    verdicts = {p: (p.task_id, p.attempt) in recorded for p in batch}
                except (*REFUSED, asyncpg.exceptions.TransactionRollbackError):
                    # Which row did Postgres refuse? Ask row by row, each with its own
                    # verdict (the batch statement wrote nothing). Also after a deadlock
                    # (40P01, e.g. with a lease renewal locking the same executions in
                    # another order) or a serialization failure: one row at a time takes
                    # its locks in one order and cannot deadlock with itself.
                    for p in batch:
                        verdicts[p] = await self._write_one(conn, p)
        except OUTAGE as exc:
            for p in batch:
                verdicts.setdefault(p, exc)
        settled = [p for p in batch if isinstance(verdicts[p], bool)]
        await self._ack(settled)
        for p in batch:
            verdict = verdicts[p]
            if isinstance(verdict, bool):
                p.done.set_result(verdict)
            else:
                p.done.set_exception(verdict)

    async def _write_one(self, conn: asyncpg.Connection, p: _Pending) -> bool | BaseException:
        for tries_left in (2, 1, 0):
            try:
                return await attempts.succeed(conn, p.task_id, p.attempt, p.result_json)
            except asyncpg.exceptions.TransactionRollbackError as exc:
                # A deadlock aborts the statement, not the attempt: write it again.
                if not tries_left:
                    raise
                log.warning("completion_retried", error=repr(exc))
            except REFUSED as exc:
                err = UnstorableResult(f"{exc.__class__.__name__}: {exc}")
                err.__cause__ = exc
                return err
            except OUTAGE as exc:
                return exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _ack(self, items: list[_Pending]) -> None:
        if not items:
            return
        if self.confirm_acks:
            await asyncio.gather(*(settle(p.msg.ack_sync(timeout=5)) for p in items))
            return
        try:
            for p in items:
                await p.msg.ack()
        except Exception as exc:  # NATS errors included: a later redelivery at worst
            log.warning("settle_failed", error=repr(exc))
            return
        # One PING/PONG per batch, off the slots' path. Acks sent while a PING is out
        # get the next one (the PONG of a PING sent before them does not cover them).
        self._unconfirmed = True
        if self._confirming is None or self._confirming.done():
            self._confirming = asyncio.create_task(self._confirm())

    async def _confirm(self) -> None:
        while self._unconfirmed:
            self._unconfirmed = False
            try:
                await self.bus.nc.flush(timeout=5)
            except Exception as exc:  # NATS errors included: a later redelivery at worst
                log.warning("settle_failed", error=repr(exc))
