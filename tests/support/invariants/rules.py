"""I1-I5 evaluated on one snapshot."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import asyncpg

from tests.support.invariants.report import COUNTED, Violation
from tests.support.invariants.snapshot import Snapshot
from tests.support.stack import TERMINAL


def overlaps(execs: Sequence[asyncpg.Record], now: dt.datetime) -> list[str]:
    """I2's timing rule: pairs of executions whose run intervals overlap."""
    problems = []
    ordered = sorted(execs, key=lambda e: e["started_at"])
    for i, a in enumerate(ordered):
        if a["status"] == "abandoned":
            continue  # its lease expired: a later attempt may legitimately take over
        a_end = a["finished_at"] or now
        for b in ordered[i + 1 :]:
            if b["started_at"] < a_end:
                problems.append(
                    f"attempt {a['attempt']} ({a['status']}, {a['started_at']:%T.%f}-"
                    f"{a_end:%T.%f}) overlaps attempt {b['attempt']} ({b['status']}, "
                    f"started {b['started_at']:%T.%f})"
                )
    return problems


def evaluate(
    snap: Snapshot, ids: list[str], replayed: set[str], now: dt.datetime
) -> tuple[list[Violation], int, int]:
    """Return (violations of I1-I5 in ``snap``, duplicates, open dead letters)."""
    out: list[Violation] = []
    duplicates = 0
    open_letters = 0
    for tid in ids:
        task = snap.tasks.get(tid)
        if task is None:
            out.append(Violation("I1", tid, "task row missing"))
            continue
        status = task["status"]
        execs = snap.executions.get(tid, [])
        letters = snap.dead_letters.get(tid, [])
        n_open = sum(1 for d in letters if d["status"] == "open")
        open_letters += n_open
        was_replayed = tid in replayed or any(d["status"] == "replayed" for d in letters)
        succeeded = [e for e in execs if e["status"] == "succeeded"]
        # I1
        if status not in TERMINAL:
            out.append(Violation("I1", tid, f"still {status} (attempts={task['attempts']})"))
        # I2
        if len(succeeded) > 1:
            duplicates += 1
            out.append(
                Violation(
                    "I2",
                    tid,
                    f"{len(succeeded)} succeeded executions "
                    f"(attempts {[e['attempt'] for e in succeeded]})",
                )
            )
        out += [Violation("I2", tid, p) for p in overlaps(execs, now)]
        # I3
        for e in execs:
            if e["status"] == "started" and e["worker_id"] not in snap.live_workers:
                out.append(
                    Violation(
                        "I3",
                        tid,
                        f"attempt {e['attempt']} still started but worker {e['worker_id']} is gone",
                    )
                )
            if e["status"] in ("abandoned", "interrupted") and not (e["error"] or "").strip():
                out.append(
                    Violation("I3", tid, f"attempt {e['attempt']} {e['status']} without a reason")
                )
        # I4: executions agree with the task row
        attempts = [e["attempt"] for e in execs]
        if attempts != list(range(1, task["attempts"] + 1)):
            out.append(
                Violation("I4", tid, f"attempts={task['attempts']} but executions {attempts}")
            )
        last = execs[-1] if execs else None
        if status in TERMINAL:
            running = [e["attempt"] for e in execs if e["status"] == "started"]
            if running:
                out.append(Violation("I4", tid, f"{status} but attempts {running} still started"))
        if status == "completed":
            if len(succeeded) != 1 or last is None or last["status"] != "succeeded":
                out.append(
                    Violation(
                        "I4",
                        tid,
                        f"completed but executions are {[e['status'] for e in execs]}",
                    )
                )
            if not task["has_result"]:
                out.append(Violation("I4", tid, "completed without a stored result"))
        if status == "failed":
            if succeeded:
                out.append(Violation("I4", tid, "failed but has a succeeded execution"))
            if last is None or last["status"] not in COUNTED:
                out.append(
                    Violation(
                        "I4",
                        tid,
                        f"failed but last execution is {last['status'] if last else None}",
                    )
                )
            if n_open != 1:
                out.append(Violation("I4", tid, f"failed with {n_open} open dead letters"))
            if snap.listed_open is not None and snap.listed_open.get(tid, 0) != 1:
                out.append(
                    Violation(
                        "I4",
                        tid,
                        f"failed but the dlq-monitor lists {snap.listed_open.get(tid, 0)} "
                        "open dead letters for it",
                    )
                )
        elif n_open:
            out.append(Violation("I4", tid, f"{status} with {n_open} open dead letters"))
        # A cancel that races a failing attempt may leave that attempt 'failed' without
        # counting it (store.tasks.cancel): the accounting rule is for the other ends.
        if not was_replayed and status in ("completed", "failed"):
            counted = sum(1 for e in execs if e["status"] in COUNTED)
            if counted != task["failed_attempts"]:
                out.append(
                    Violation(
                        "I4",
                        tid,
                        f"failed_attempts={task['failed_attempts']} but {counted} counted "
                        f"executions ({[e['status'] for e in execs]})",
                    )
                )
            if counted > task["max_attempts"]:
                out.append(
                    Violation("I4", tid, f"{counted} counted failures > max {task['max_attempts']}")
                )
    if snap.listed_error is not None:
        out.append(Violation("I4", None, f"dlq-monitor API unavailable: {snap.listed_error}"))
    # I5
    all_terminal = all(
        snap.tasks.get(t) is not None and snap.tasks[t]["status"] in TERMINAL for t in ids
    )
    if all_terminal:
        if snap.consumers is None:
            out.append(Violation("I5", None, f"consumer state unavailable: {snap.consumer_error}"))
        else:
            for name, (pending, ack_pending) in sorted(snap.consumers.items()):
                if pending or ack_pending:
                    out.append(
                        Violation(
                            "I5", None, f"{name}: pending={pending} ack_pending={ack_pending}"
                        )
                    )
    return out, duplicates, open_letters
