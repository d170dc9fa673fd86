"""Check I1-I6 against a running stack, polling until they hold or a deadline passes."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections import Counter
from collections.abc import Iterable

from tests.support.invariants.report import Report, Violation
from tests.support.invariants.rules import evaluate
from tests.support.invariants.snapshot import DB_OUTAGE, Snapshot, snapshot
from tests.support.invariants.watcher import VersionWatcher
from tests.support.stack import Stack


async def check_invariants(
    stack: Stack,
    task_ids: Iterable[str],
    *,
    deadline_s: float,
    watcher: VersionWatcher | None = None,
    replayed: Iterable[str] = (),
    dlq_api: bool = True,
    consumers: bool = True,
    poll_s: float = 0.25,
) -> Report:
    """Check I1-I6 for ``task_ids`` on ``stack``; wait up to ``deadline_s`` for them to hold.

    Polls until every task is terminal, no gone worker still owns a ``started``
    execution, every failed task's dead letter is recorded and listed, and the task
    consumers are drained, or until the deadline; then evaluates every invariant on
    one final snapshot. ``replayed`` names tasks replayed on purpose (I4's attempt
    accounting and I6's terminal rule do not apply to them). ``dlq_api=False`` skips
    the dlq-monitor listing (a stack without one); ``consumers=False`` skips I5. An
    API or server that cannot be read counts as a violation, never as a pass.
    A watcher passed in is stopped here.
    """
    ids = list(dict.fromkeys(str(t) for t in task_ids))
    uuids = [uuid.UUID(t) for t in ids]
    allowed = set(replayed)
    started = time.monotonic()
    deadline = started + deadline_s
    snap: Snapshot | None = None
    found: list[Violation] = []
    duplicates = open_letters = 0
    last_error: BaseException | None = None
    while True:
        try:
            snap = await snapshot(stack, uuids, dlq_api=dlq_api, consumers=consumers)
        except DB_OUTAGE as exc:  # Postgres restarting (chaos): poll again
            last_error = exc
        else:
            now = dt.datetime.now(dt.UTC)
            found, duplicates, open_letters = evaluate(snap, ids, allowed, now)
            # Only violations that waiting can still cure keep us polling.
            curable = [v for v in found if v.invariant in ("I1", "I3", "I4", "I5")]
            if not curable:
                break
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(poll_s)  # polling period against the deadline
    if snap is None:
        raise AssertionError(f"could not read the database before the deadline: {last_error!r}")
    if watcher is not None:
        await watcher.stop()
        found += watcher.final(snap.tasks, allowed | _replayed(snap))
    return Report(
        submitted=len(ids),
        statuses=Counter(snap.tasks[t]["status"] if t in snap.tasks else "missing" for t in ids),
        dead_letters=open_letters,
        duplicates=duplicates,
        executions=sum(len(v) for v in snap.executions.values()),
        violations=found,
        elapsed_s=time.monotonic() - started,
    )


def _replayed(snap: Snapshot) -> set[str]:
    return {
        tid
        for tid, letters in snap.dead_letters.items()
        if any(d["status"] == "replayed" for d in letters)
    }
