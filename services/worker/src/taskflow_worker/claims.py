"""Claiming fetched deliveries: one statement per fetch, then each claimed one is run.

A fetch's distinct task ids go into one batch claim (one round trip that also opens the
execution rows and their leases). A delivery that did not claim is settled without
running anything, after asking Postgres why (:func:`~taskflow_common.store.claims.diagnose`):
terminal task or stale copy -> ack; attempt owned by a live worker -> nak until its lease
has run out (see below); owner's lease expired for more than one further lease -> the
attempt is abandoned (counted) and the retry scheduled -> ack; unknown task ->
dead-lettered.

A lease expired for less than that is not taken over: after a Postgres outage or a
network blip longer than the lease, every live owner's lease looks expired until it
renews, and a worker cannot tell that from a dead owner. The delivery is nak'd until
the lease has been expired for one more lease (:data:`LEASE_SLACK_S` more); meanwhile
the owner renews (it runs on), or the dispatcher's reaper, which knows whether
Postgres was away (its ``LeaseTrust``), abandons the attempt.

An attempt "owned elsewhere" may be a phantom: a claim that committed while its worker
saw an error, which that worker nak'd and nobody runs. Acking would drop the only copy
of the message, so nobody could adopt the attempt and it would end abandoned (with
``max_attempts=1``: failed, its handler never run). The delivery is nak'd with a delay
covering the rest of the lease (:data:`LEASE_SLACK_S` more), so it comes back once the
owner has either renewed the lease (it runs the attempt), adopted the attempt, or lost
it. Only a delivery near ``max_deliver`` is acked, not to strand it in the stream.

A claim that failed with an outage error may have committed anyway, leaving an open
attempt owned by this process that nobody runs. Such deliveries are remembered (the
uncertain claims) and their redelivery adopts the attempt
(:func:`~taskflow_common.store.claims.adopt`) instead of waiting for its lease to end.
The redelivery may go to another worker, which naks it past the lease, so the reaper
would abandon the attempt (counted) first: as soon as Postgres answers again,
:meth:`Claims.settle_uncertain` (from the heartbeat's lease beat, well within the lease)
gives back every uncertain claim that did commit and that this process does not run
(``interrupted``, not counted); the message's next delivery claims the task again.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
from nats.aio.msg import Msg

from taskflow_common.backoff import backoff_delay
from taskflow_common.db import Database
from taskflow_common.errors import MalformedMessage
from taskflow_common.logs import bound, get_logger
from taskflow_common.messages import TaskMessage
from taskflow_common.retry import OUTAGE
from taskflow_common.store import attempts
from taskflow_common.store import claims as claim_store
from taskflow_common.store.claims import Claim, Refusal
from taskflow_common.subjects import Priority
from taskflow_worker.attempt import AttemptRunner
from taskflow_worker.delivery import DeadLetters, redelivery_delay, settle
from taskflow_worker.running import RunningAttempts
from taskflow_worker.settings import WorkerSettings

log = get_logger(__name__)

LEASE_SLACK_S = 1.0
"""Seconds past an owner's lease end before a nak'd "owned elsewhere" delivery comes back."""

PHANTOM = "claim committed while its worker saw an error; given back unrun"
"""The error recorded for a phantom claim its worker gives back."""

UNCERTAIN_MAX = 10_000
"""Uncertain claims remembered at most (oldest forgotten first)."""

BatchClaim = asyncio.Future[dict[uuid.UUID, Claim]]
"""The claims of one fetch by task id, shared by the handling tasks of that fetch."""


class Claims:
    """Claims deliveries and hands each claimed one to the runner; owns the slots.

    ``inflight`` counts deliveries being claimed, run or recorded (the slots in use);
    ``slot_free`` is set whenever one ends; ``handling`` holds their tasks.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        db: Database,
        runner: AttemptRunner,
        running: RunningAttempts,
        dead_letters: DeadLetters,
    ) -> None:
        self.settings = settings
        self.db = db
        self.runner = runner
        self.running = running
        self.dead_letters = dead_letters
        self.lease_s = settings.worker_ack_wait
        self.inflight = 0
        self.handling: set[asyncio.Task[None]] = set()
        self.slot_free = asyncio.Event()
        # Deliveries (task id -> dispatch) whose claim failed with an outage error: it
        # may have committed anyway, leaving an open attempt owned by this process.
        self.uncertain: dict[uuid.UUID, int] = {}
        self.uncertain_since: dict[uuid.UUID, float] = {}  # monotonic time remembered
        self.adopting: set[uuid.UUID] = set()  # adoptions between check and run

    def start(self, batch: list[tuple[Priority, Msg]]) -> None:
        """Claim a fetch's deliveries together; one handling task per message.

        Each distinct task id goes into one batch claim (a shared future every handling
        task of the batch awaits); a second delivery of a task already in the batch, or
        an undecodable one, is handled alone as before.
        """
        decoded: list[tuple[Priority, Msg, TaskMessage | None]] = []
        deliveries: dict[uuid.UUID, int] = {}
        for priority, msg in batch:
            try:
                message: TaskMessage | None = TaskMessage.decode(msg.data)
            except MalformedMessage:
                message = None
            decoded.append((priority, msg, message))
            if message is not None and message.task_id not in deliveries:
                deliveries[message.task_id] = message.dispatch
        claims: BatchClaim | None = None
        sent = time.monotonic()  # the claims' leases start no earlier
        if deliveries:
            claims = asyncio.ensure_future(self._claim_many(list(deliveries.items())))
        for priority, msg, message in decoded:
            shared = None
            if message is not None and deliveries.get(message.task_id) == message.dispatch:
                del deliveries[message.task_id]  # later copies are handled alone
                shared = claims
            self.inflight += 1
            task = asyncio.create_task(self.handle(priority, msg, shared, message, sent))
            self.handling.add(task)
            task.add_done_callback(self._handled)

    async def _claim_many(self, deliveries: list[tuple[uuid.UUID, int]]) -> dict[uuid.UUID, Claim]:
        async with self.db.acquire() as conn:
            return await claim_store.claim_many(
                conn, deliveries, self.settings.worker_id, self.lease_s
            )

    def _handled(self, task: asyncio.Task[None]) -> None:
        self.handling.discard(task)
        self.inflight -= 1
        self.slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("handle_crashed", error=f"{exc.__class__.__name__}: {exc}")

    async def handle(
        self,
        priority: Priority,
        msg: Msg,
        claims: BatchClaim | None = None,
        message: TaskMessage | None = None,
        sent: float | None = None,
    ) -> None:
        """Process one delivery end to end; always settles the message.

        ``claims`` is the batch claim this delivery took part in (see :meth:`start`),
        sent at monotonic time ``sent``; without it the delivery claims alone.
        ``message`` is ``msg`` already decoded.
        """
        if message is None:
            try:
                message = TaskMessage.decode(msg.data)
            except MalformedMessage as exc:
                await self.dead_letters.malformed(msg, exc.reason)
                return
        with bound(task_id=str(message.task_id)):
            try:
                outcome = await self._claim_and_run(message, msg, claims, sent)
            except OUTAGE as exc:
                # Postgres away: usually the claim did not commit and no attempt was
                # used; if it did commit unseen, the redelivery adopts it (see below).
                self._remember_uncertain(message)
                log.warning("claim_unavailable", error=repr(exc))
                await settle(msg.nak(delay=redelivery_delay(msg)))
                return
            except Exception as exc:
                # Anything else (a value Postgres refuses, a bug) must not leak the
                # delivery: unsettled messages count against max_ack_pending until their
                # ack wait ends and can stall the consumer. An attempt left open ends
                # through its lease.
                log.error("handle_failed", error=f"{exc.__class__.__name__}: {exc}")
                await settle(msg.nak(delay=redelivery_delay(msg)))
                return
            if outcome == "settled":
                return
            await settle(msg.ack_sync(timeout=5))

    def _remember_uncertain(self, message: TaskMessage) -> None:
        self.uncertain.pop(message.task_id, None)
        self.uncertain[message.task_id] = message.dispatch
        self.uncertain_since[message.task_id] = time.monotonic()
        while len(self.uncertain) > UNCERTAIN_MAX:  # bounded; oldest first
            self._forget_uncertain(next(iter(self.uncertain)))

    def _forget_uncertain(self, task_id: uuid.UUID) -> None:
        self.uncertain.pop(task_id, None)
        self.uncertain_since.pop(task_id, None)

    async def settle_uncertain(self) -> None:
        """Give back the uncertain claims that committed and that nobody here runs.

        Each such attempt (owned by this worker, still open, no handler here, not being
        adopted) is recorded ``interrupted`` (not counted) and forgotten; one that did
        not commit is forgotten once a lease has passed (its statement cannot commit
        later than that). An outage ends the pass quietly: the next beat tries again.
        """
        if not self.uncertain:
            return
        now = time.monotonic()
        ids = [t for t in self.uncertain if t not in self.adopting]
        try:
            async with self.db.acquire() as conn:
                found = await claim_store.open_attempts(conn, ids, self.settings.worker_id)
                for task_id in ids:
                    attempt = found.get(task_id)
                    if attempt is None:
                        if now - self.uncertain_since.get(task_id, now) > self.lease_s:
                            self._forget_uncertain(task_id)
                        continue
                    if task_id in self.adopting or self.running.of_task(task_id) is not None:
                        continue  # adopted meanwhile: it runs here
                    # Forgotten first: no adoption can start for it from here on.
                    self._forget_uncertain(task_id)
                    if await attempts.interrupt(conn, task_id, attempt, PHANTOM):
                        log.warning("claim_given_back", task_id=str(task_id), attempt=attempt)
        except OUTAGE as exc:
            log.warning("uncertain_claims_unavailable", error=repr(exc))

    async def _adopt(
        self, conn: asyncpg.Connection, message: TaskMessage, refusal: Refusal
    ) -> Claim | None:
        """Take back our own attempt whose claim committed while we saw an error."""
        if (
            refusal.verdict not in ("owned_elsewhere", "lease_expired")
            or refusal.worker_id != self.settings.worker_id
            or self.uncertain.get(message.task_id) != message.dispatch
            or self.running.of_task(message.task_id) is not None
        ):
            return None
        # Until the attempt runs (the caller discards it), settle_uncertain leaves it.
        self.adopting.add(message.task_id)
        claim = await claim_store.adopt(
            conn,
            message.task_id,
            refusal.attempt,
            message.dispatch,
            self.settings.worker_id,
            self.lease_s,
        )
        if claim is not None:
            log.warning("claim_adopted", attempt=claim.attempt, dispatch=message.dispatch)
        return claim

    async def _claim_and_run(
        self, message: TaskMessage, msg: Msg, claims: BatchClaim | None, sent: float | None
    ) -> str:
        try:
            return await self._claim_and_run_once(message, msg, claims, sent)
        finally:
            self.adopting.discard(message.task_id)

    async def _claim_and_run_once(
        self, message: TaskMessage, msg: Msg, claims: BatchClaim | None, sent: float | None
    ) -> str:
        if claims is not None:
            # shield: this task's cancellation must not cancel the claim the others share.
            claimed = (await asyncio.shield(claims)).get(message.task_id)
            if claimed is not None:
                self._forget_uncertain(message.task_id)
                return await self.runner.run(claimed, msg, sent)
        sent = time.monotonic()  # a claim or adoption below starts its lease no earlier
        async with self.db.acquire() as conn:
            claim: Claim | Refusal
            if claims is not None:  # the batch claim refused it: ask why (the rare path)
                claim = await claim_store.diagnose(conn, message.task_id)
            else:
                claim = await claim_store.claim(
                    conn, message.task_id, message.dispatch, self.settings.worker_id, self.lease_s
                )
            if isinstance(claim, Refusal):
                claim = await self._adopt(conn, message, claim) or claim
            self._forget_uncertain(message.task_id)
            if isinstance(claim, Refusal):
                if claim.verdict == "unknown_task":
                    await self.dead_letters.malformed(msg, f"unknown task id {message.task_id}")
                    return "settled"
                # Expired for less than one more lease: maybe only an outage kept its
                # owner from renewing; leave that to the owner or the reaper (below).
                wait_s = claim.lease_left_s + (
                    self.lease_s if claim.verdict == "lease_expired" else 0.0
                )
                if claim.verdict == "lease_expired" and wait_s <= 0:
                    await _take_over(conn, self.settings, message.task_id, claim)
                    log.debug("delivery_skipped", verdict=claim.verdict, dispatch=message.dispatch)
                    return "ack"
                log.debug("delivery_skipped", verdict=claim.verdict, dispatch=message.dispatch)
                if claim.verdict in ("owned_elsewhere", "lease_expired") and self._may_redeliver(
                    msg
                ):
                    await settle(msg.nak(delay=max(0.0, wait_s) + LEASE_SLACK_S))
                    return "settled"
                return "ack"
        return await self.runner.run(claim, msg, sent)

    def _may_redeliver(self, msg: Msg) -> bool:
        """True while ``msg`` has deliveries left before ``max_deliver`` (one kept spare)."""
        delivered = msg.metadata.num_delivered or 1
        return delivered < self.settings.worker_max_deliver - 1


async def _take_over(
    conn: asyncpg.Connection, s: WorkerSettings, task_id: uuid.UUID, refusal: Refusal
) -> None:
    """Abandon the attempt of a gone owner (counted) and schedule the retry."""
    outcome = await attempts.abandon(
        conn,
        task_id,
        refusal.attempt,
        reason="worker lost: lease expired before the attempt ended (redelivered)",
        backoff_s=backoff_delay(
            refusal.failed_attempts + 1, s.worker_backoff_base, s.worker_backoff_max
        ),
    )
    if outcome is not None:
        log.warning("attempt_abandoned", attempt=refusal.attempt, task_status=outcome.status)
