"""Running one claimed attempt: the handler under its timeout, then its outcome recorded.

:class:`AttemptRunner` runs the handler for a :class:`~taskflow_common.store.claims.Claim`
inside a ``task attempt`` span, turns how it ended into an :class:`Outcome` and records
that outcome (retrying while Postgres is briefly away). Successes go to the
:class:`~taskflow_worker.completions.Completions` writer, which records them in batches
and acks after the commit; failures, interrupts and cancels are recorded one by one.

A running attempt (:mod:`taskflow_worker.running`) is stopped from outside with
:meth:`~taskflow_worker.running.Running.stop`: a cancel request, a lost lease or one this
worker could not renew in time (see :mod:`taskflow_worker.heartbeat`), or the end of the
shutdown grace. The reason decides how the attempt is recorded.

A handler that ignores its cancellation (stuck, see
:func:`~taskflow_worker.running.await_handler`) is not recorded while it runs: any
outcome would let another run of the task start (a retry, or a redelivery of a given
back attempt) alongside it. Its attempt stays registered, so the heartbeat renews its
lease and keeps its message in progress, and its slot stays taken; when the coroutine
ends, its real outcome is recorded. At the end of the shutdown grace it is left to its
lease: the process exits past it (:mod:`taskflow_worker.worker`), its message is not
settled, and the dispatcher's reaper abandons the attempt once the lease runs out.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from nats.aio.msg import Msg
from opentelemetry import trace

from taskflow_common import tracing
from taskflow_common.backoff import backoff_delay
from taskflow_common.db import Database
from taskflow_common.logs import EventLogger, bound, get_logger
from taskflow_common.retry import OUTAGE, Backoff
from taskflow_common.store import attempts
from taskflow_common.store.claims import Claim
from taskflow_worker.completions import Completions, UnstorableResult
from taskflow_worker.delivery import redelivery_delay, settle
from taskflow_worker.handlers import PermanentError, TaskContext, lookup
from taskflow_worker.heartbeat import LEASE_MARGIN
from taskflow_worker.metrics import WorkerMetrics
from taskflow_worker.running import Running, RunningAttempts, await_handler
from taskflow_worker.settings import WorkerSettings

__all__ = ["AttemptRunner", "Outcome", "Running", "RunningAttempts"]

log = get_logger(__name__)

STALE_CANCEL = "stopped by a cancel request for a task no longer cancelled"
"""The error recorded for an attempt stopped by a stale cancel request (given back)."""

LEASE_UNRENEWED = "lease not renewed; stopped"
"""The error recorded for an attempt stopped because its lease could not be renewed."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended, before it is recorded."""

    kind: Literal["succeeded", "failed", "interrupted", "cancelled", "lost"]
    result_json: str = "null"
    error: str = ""
    error_type: str = ""
    permanent: bool = False


class AttemptRunner:
    """Runs claimed attempts and records their outcomes; see the module docstring."""

    def __init__(
        self,
        settings: WorkerSettings,
        db: Database,
        metrics: WorkerMetrics,
        completions: Completions,
        running: RunningAttempts,
    ) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        self.completions = completions
        self.running = running
        self.tracer = trace.get_tracer("taskflow.worker")
        self._grace_over = asyncio.Event()
        self.stuck_s = min(5.0, settings.worker_ack_wait * LEASE_MARGIN / 2)
        """Seconds a cancelled handler may take to end before it is abandoned as stuck.

        At most half the lease watch's margin (:data:`~taskflow_worker.heartbeat.LEASE_MARGIN`
        x lease, the lease being ``WORKER_ACK_WAIT``): a handler the watch stops for an
        unrenewed lease ends, if it unwinds in time at all, before that lease does.
        """
        self.stuck: set[asyncio.Task[Any]] = set()
        """Handlers abandoned as stuck that are still running (see :func:`await_handler`)."""

    @property
    def grace_over(self) -> bool:
        """True once the shutdown grace is over: no handler may start any more."""
        return self._grace_over.is_set()

    @grace_over.setter
    def grace_over(self, over: bool) -> None:
        if over:
            self._grace_over.set()
        else:
            self._grace_over.clear()

    async def run(self, claim: Claim, msg: Msg, leased_at: float | None = None) -> str:
        """Run the handler for ``claim``, record the outcome; return ``ack`` or ``settled``.

        ``leased_at`` is the monotonic time the claim was sent (its lease started no
        earlier). ``ack``: the caller acks ``msg``; ``settled``: ``msg`` was already
        acked or nak'd. Raises only for a bug (every outage is handled while recording).
        """
        running = Running(claim, msg)
        if leased_at is not None:
            running.lease_from = leased_at
        self.running.add(running)
        parent = tracing.extract(msg.headers)
        try:
            with (
                bound(attempt=claim.attempt, type=claim.type),
                self.tracer.start_as_current_span(
                    "task attempt",
                    context=parent,
                    kind=trace.SpanKind.CONSUMER,
                    attributes={
                        "taskflow.task_id": str(claim.task_id),
                        "taskflow.type": claim.type,
                        "taskflow.attempt": claim.attempt,
                    },
                ) as span,
            ):
                log.debug("attempt_started", priority=claim.priority)
                self.metrics.attempt_started(claim.type, claim.priority, claim.queue_wait_s)
                outcome = await self._execute(running)
                if outcome is None:
                    # A stuck handler at the end of the grace: left to its lease.
                    log.warning("attempt_left_to_lease", reason="handler stuck at shutdown")
                    return "settled"
                self.metrics.attempt_finished(
                    claim.type, outcome.kind, time.monotonic() - running.started
                )
                span.set_attribute("taskflow.outcome", outcome.kind)
                if outcome.kind == "failed":
                    span.set_status(trace.StatusCode.ERROR, outcome.error[:200])
                return await self._record(running, outcome)
        finally:
            self.running.discard(running)

    async def _execute(self, running: Running) -> Outcome | None:
        """Run the handler; how it ended, or None for a stuck one at the grace's end."""
        claim = running.claim
        fn = lookup(claim.type)
        if fn is None:
            return Outcome(
                "failed",
                error=f"no handler registered for task type {claim.type!r} "
                f"(WORKER_HANDLERS={self.settings.handlers})",
                error_type="UnknownTaskType",
                permanent=True,
            )
        timeout = claim.timeout_s or self.settings.task_timeout
        ctx = TaskContext(
            task_id=claim.task_id,
            type=claim.type,
            attempt=claim.attempt,
            priority=claim.priority,
            deadline=time.time() + timeout,
            log=_handler_log(claim.type),
        )
        if self.grace_over:
            # Claimed after the shutdown grace ran out (the claim was still on its way
            # to Postgres): give the attempt back without running it.
            return Outcome("interrupted", error="worker shutting down")
        running.task = asyncio.ensure_future(fn(ctx, claim.payload))
        if not await await_handler(running, timeout, self.stuck_s, self.stuck):
            self.metrics.handler_stuck(claim.type)
            if not await self._outlive(running.task):
                return None
        return outcome_of(running, timeout)

    async def _outlive(self, task: asyncio.Task[Any]) -> bool:
        """Wait for a stuck handler to end; False if the shutdown grace ends first."""
        over = asyncio.ensure_future(self._grace_over.wait())
        try:
            await asyncio.wait({task, over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            over.cancel()
        return task.done()

    async def _record(self, running: Running, outcome: Outcome) -> str:
        """Write the outcome, retrying through Postgres outages however long; settle the message.

        While it retries the attempt stays registered in :attr:`running`, so the
        heartbeat keeps its message in progress and renews its lease as soon as Postgres
        answers: a late write is safe (every statement is fenced by attempt), a success
        is never thrown away for an outage and no attempt is used up by one. Any other
        error of one try is logged (``loop_failed``), counted in
        ``taskflow_loop_errors_total{loop="record"}`` and retried the same way. Only once
        the shutdown grace is over does it give up (the process is exiting): the message
        is nak'd and the attempt left to its lease.
        """
        claim, msg = running.claim, running.msg
        if outcome.kind == "lost":
            log.warning("attempt_lost", reason=outcome.error)
            return "ack"
        backoff = Backoff()
        errors_backoff = Backoff(max_s=30.0)  # a lasting error is logged less often
        while True:
            try:
                if outcome.kind == "succeeded":
                    try:
                        # Recorded with the other successes of the moment, acked after
                        # that commit by the writer.
                        ok = await self.completions.succeed(
                            claim.task_id, claim.attempt, outcome.result_json, msg
                        )
                    except UnstorableResult as e:
                        outcome = Outcome(
                            "failed",
                            error=f"result cannot be stored: {e}",
                            error_type="UnstorableResult",
                            permanent=True,
                        )
                        continue
                    if ok:
                        self.metrics.task_completed(claim.type, claim.priority)
                        log.debug("attempt_succeeded")
                    else:
                        log.warning("attempt_fenced", outcome="succeeded")
                    return "settled"
                async with self.db.acquire() as conn:
                    if outcome.kind == "interrupted":
                        await attempts.interrupt(conn, claim.task_id, claim.attempt, outcome.error)
                        log.info("attempt_interrupted")
                        await settle(msg.nak())
                        return "settled"
                    if outcome.kind == "cancelled":
                        if await attempts.mark_cancelled(
                            conn, claim.task_id, claim.attempt, outcome.error
                        ) or not await attempts.interrupt(
                            conn, claim.task_id, claim.attempt, STALE_CANCEL
                        ):
                            # Closed here or by the API's cancel itself.
                            log.info("attempt_cancelled")
                            return "ack"
                        # The task was not cancelled (a stale request named no attempt):
                        # give the attempt back, not counted, and run it again.
                        log.warning("attempt_interrupted", reason=STALE_CANCEL)
                        await settle(msg.nak())
                        return "settled"
                    s = self.settings
                    failure = await attempts.fail(
                        conn,
                        claim.task_id,
                        claim.attempt,
                        error=outcome.error,
                        error_type=outcome.error_type,
                        permanent=outcome.permanent,
                        backoff_s=backoff_delay(
                            claim.failed_attempts + 1, s.worker_backoff_base, s.worker_backoff_max
                        ),
                    )
                    if failure is not None:
                        self.metrics.attempt_failed(claim.type, claim.priority, failure.status)
                    log.warning(
                        "attempt_failed",
                        error=outcome.error,
                        error_type=outcome.error_type,
                        permanent=outcome.permanent,
                        task_status=failure.status if failure else "fenced",
                        retry_at=(
                            str(failure.run_at)
                            if failure and failure.status == "retrying"
                            else None
                        ),
                    )
                    return "ack"
            except OUTAGE as exc:
                if self.grace_over:
                    # Exiting: the lease expires and the attempt is abandoned by the reaper.
                    log.error("record_failed", error=repr(exc), reason="shutdown grace over")
                    await settle(msg.nak(delay=redelivery_delay(msg)))
                    return "settled"
                delay = backoff.failed()
                log.warning("record_unavailable", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)  # back off before retrying the write
            except Exception as exc:
                # Not an outage (a deadlock, a trigger or constraint refusing one row, a
                # bug): the loop's contract still holds. Logged with its class, counted,
                # backed off and tried again; the outcome is never dropped for it.
                if self.grace_over:
                    log.error("record_failed", error=repr(exc), reason="shutdown grace over")
                    await settle(msg.nak(delay=redelivery_delay(msg)))
                    return "settled"
                delay = errors_backoff.failed()
                log.error(
                    "loop_failed",
                    exc=True,
                    loop="record",
                    error_class=type(exc).__name__,
                    error=repr(exc)[:500],
                    retry_in_s=delay,
                )
                self.metrics.loop_errors.count("record", exc)
                await asyncio.sleep(delay)


def outcome_of(running: Running, timeout: float) -> Outcome:
    """How the ended handler of ``running`` ended (its stop reason first), as an Outcome.

    ``timeout`` (seconds) is the handler's timeout, named in a timed-out failure.
    """
    task = running.task
    assert task is not None
    assert task.done()
    reason = running.stop_reason
    if task.cancelled() and reason in (None, "timeout"):
        # Counted, whatever stopped it later while it unwound (the first reason stays).
        return Outcome("failed", error=f"timed out after {timeout:g}s", error_type="TimeoutError")
    # A timed-out handler that swallowed its cancellation and then ended on its own
    # is recorded by its real outcome (below); one stopped from outside by the reason.
    if reason is not None and reason != "timeout":
        if reason == "shutdown":
            return Outcome("interrupted", error="worker shutting down")
        if reason == "cancelled":
            return Outcome("cancelled", error="cancelled by request")
        if reason == "lease_unrenewed":
            # Not counted: this worker lost Postgres, the task did nothing wrong.
            return Outcome("interrupted", error=LEASE_UNRENEWED)
        return Outcome("lost", error="lease lost to another worker")
    exc = task.exception()
    if exc is not None:
        return Outcome(
            "failed",
            error=f"{exc.__class__.__name__}: {exc}"[:4000],
            error_type=exc.__class__.__name__,
            permanent=isinstance(exc, PermanentError),
        )
    try:
        result_json = orjson.dumps(task.result()).decode()
    except TypeError as err:
        return Outcome(
            "failed",
            error=f"result is not JSON-serialisable: {err}",
            error_type="UnserializableResult",
            permanent=True,
        )
    return Outcome("succeeded", result_json=result_json)


@functools.lru_cache(maxsize=256)
def _handler_log(task_type: str) -> EventLogger:
    """The logger handed to ``task_type``'s handlers (built once per type, not per task)."""
    return get_logger(f"taskflow.handler.{task_type}")
