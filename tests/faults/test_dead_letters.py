"""Issue 11, item 7 and the retry race: every failed task keeps its dead letter.

Real processes throughout. A dead letter lives on the bus between the dispatcher's
publish and the dlq-monitor's record; these scenarios take the bus copy away (a wiped
NATS store while the monitor is down), repeat a malformed message's stream sequence in a
second incarnation of the task stream, and replay a task between the publish and the
record. What is checked is what an operator sees: the dead letters the monitor lists and
the ``dead_letters`` rows.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import nats.js.errors
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskflow_common.messages import DeadLetter
from taskflow_common.subjects import HEADER_MSG_ID
from taskflow_devstack.servers import NatsServer
from tests.faults.conftest import MakeStack
from tests.support.faults import jetstream
from tests.support.invariants import check_invariants
from tests.support.stack import Stack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.faults

# The dispatcher looks for dead letters that the bus no longer holds this often.
RECONCILE_ENV = {"DISPATCHER_DEAD_LETTER_CHECK_INTERVAL": "500ms"}


async def dlq_messages(stack: Stack) -> int:
    """How many messages the dead-letter stream holds (0 while it does not exist)."""
    async with jetstream(stack.env) as js:
        try:
            info = await js.stream_info(f"{stack.env['NATS_STREAM_NAME']}_DLQ")
        except nats.js.errors.NotFoundError:
            return 0
        return int(info.state.messages)


async def rows_of(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    """The task's dead-letter rows (attempts, status), oldest first."""
    rows = await stack.db_rows(
        "SELECT attempts, status FROM dead_letters WHERE task_id = $1::uuid ORDER BY recorded_at",
        task_id,
    )
    return [dict(r) for r in rows]


async def start_monitor(stack: Stack) -> None:
    """Start the dlq-monitor now (the stack was made without one)."""
    stack.dlq = await stack.services.start("dlq-monitor", stack.env)


async def test_a_dead_letter_published_while_the_monitor_is_down_survives_a_wiped_store(
    make_stack: MakeStack, nats_server: NatsServer
) -> None:
    """Item 7: the monitor is down, a task fails, the NATS store is lost, the monitor
    comes back: the failed task still gets its dead letter."""
    stack = await make_stack(dlq=False, env=RECONCILE_ENV)
    task = await stack.submit("test.always_fail", max_attempts=1)
    done = await stack.wait_status(task["id"], timeout=20)
    assert done["status"] == "failed"
    # Positive signal: the dispatcher published the dead letter (the bus holds it).
    await wait_for(lambda: dlq_messages(stack), 10, what="the dead letter on the bus")

    nats_server.restart(clear_store=True)
    await start_monitor(stack)

    async def recorded() -> list[dict[str, Any]]:
        return await rows_of(stack, task["id"])

    rows = await wait_for(recorded, 20, what="the failed task's dead letter to be recorded")
    assert rows == [{"attempts": 1, "status": "open"}]
    report = await check_invariants(stack, [task["id"]], deadline_s=10)
    report.assert_ok()
    assert report.dead_letters == 1


async def test_malformed_messages_with_one_sequence_in_two_stream_incarnations_are_both_kept(
    make_stack: MakeStack,
) -> None:
    """Item 7: the malformed-message key must not repeat after the stream is recreated.

    A garbage message is the first one of the task stream (sequence 1); the stream is
    deleted and made again (by the dispatcher's stream watch), and another garbage message
    is again sequence 1. Both must be dead letters.
    """
    stack = await make_stack(env={"DISPATCHER_STREAM_CHECK_INTERVAL": "200ms"})
    assert stack.dlq is not None
    stream = stack.env["NATS_STREAM_NAME"]
    subject = f"{stack.env['NATS_SUBJECT_PREFIX']}.normal"
    worker = stack.workers[0]
    sequences = []
    for n in (1, 2):
        async with jetstream(stack.env) as js:
            ack = await js.publish(subject, f"not a task message {n}".encode())
        sequences.append(ack.seq)
        await wait_for(
            lambda n=n: len(worker.events("message_dead_lettered")) >= n,  # type: ignore[misc]
            15,
            what=f"the worker to dead-letter garbage message {n}",
        )
        if n == 1:
            async with jetstream(stack.env) as js:
                await js.delete_stream(stream)

            async def recreated() -> bool:
                async with jetstream(stack.env) as js:
                    try:
                        await js.stream_info(stream)
                    except nats.js.errors.NotFoundError:
                        return False
                    return True

            await wait_for(recreated, 15, what="the task stream to be recreated")
    assert sequences == [1, 1], "the two garbage messages must share a stream sequence"

    async def malformed() -> list[dict[str, Any]]:
        return [d for d in await stack.dead_letters() if d["reason"].startswith("malformed")]

    async def both() -> bool:
        return len(await malformed()) >= 2

    try:
        await wait_for(both, 15, what="two malformed-message dead letters")
    except AssertionError:
        seen = await malformed()
        raise AssertionError(f"{len(seen)} malformed dead letter(s) recorded, not 2") from None
    assert len(await malformed()) == 2
    assert stack.dlq.running


async def test_a_task_retried_before_its_dead_letter_is_recorded_has_no_open_dead_letter(
    make_stack: MakeStack,
) -> None:
    """Item 11's smaller one: a retry between the dead letter's publish and its record.

    The dlq-monitor is down while the task fails and the dispatcher publishes its dead
    letter; the task is retried over the API (and then succeeds); the monitor comes back
    and records the dead letter of the failure that was retried. It must not be ``open``:
    the task is not failed any more, and replay-all must not pick it up.
    """
    stack = await make_stack(dlq=False)
    task = await stack.submit("test.flaky", {"fail_times": 1}, max_attempts=1)
    failed = await stack.wait_status(task["id"], timeout=20)
    assert failed["status"] == "failed"
    await wait_for(lambda: dlq_messages(stack), 10, what="the dead letter on the bus")

    resp = await stack.http.post(f"{stack.api_url}/tasks/{task['id']}/retry")
    assert resp.status_code == 200, resp.text
    done = await stack.wait_status(task["id"], timeout=20)
    assert done["status"] == "completed"

    await start_monitor(stack)

    async def recorded() -> list[dict[str, Any]]:
        return await rows_of(stack, task["id"])

    rows = await wait_for(recorded, 15, what="the retried failure's dead letter to be recorded")
    assert rows == [{"attempts": 1, "status": "replayed"}]
    listed = [d for d in await stack.dead_letters(status="open") if d["task_id"] == task["id"]]
    assert listed == []
    report = await check_invariants(stack, [task["id"]], deadline_s=10, replayed=[task["id"]])
    report.assert_ok()


POISON_TRIGGER = """
CREATE FUNCTION test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.reason = 'poison' THEN
        RAISE EXCEPTION 'this dead letter is refused by a trigger';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER test_poison BEFORE INSERT ON dead_letters
    FOR EACH ROW EXECUTE FUNCTION test_poison();
"""


@pytest.mark.service_errors(
    r'"event":"loop_failed".*"error_class":"RaiseError"',
    "the test's trigger refuses one dead letter on purpose: the monitor logs that pass",
    service="dlq-monitor",
)
async def test_the_monitor_survives_a_dead_letter_postgres_refuses_and_keeps_recording(
    make_stack: MakeStack,
) -> None:
    """Item 2 (dlq-monitor part): one pass hits an error that is not an outage.

    A trigger added to this test's database refuses one dead letter with ``RAISE
    EXCEPTION`` (not a data or constraint error, not an outage). The monitor must log
    and count it, go on recording the dead letters behind it, and record the refused one
    once the trigger is gone.
    """
    stack = await make_stack(workers=0)
    assert stack.dlq is not None
    await db_execute(stack, POISON_TRIGGER)
    subject = f"{stack.env['NATS_SUBJECT_PREFIX']}.dlq"
    async with jetstream(stack.env) as js:
        for reason, msg_id in (("poison", "test-poison"), ("after the poison", "test-good")):
            body = DeadLetter(reason=reason, error="boom").encode()
            await js.publish(subject, body, headers={HEADER_MSG_ID: msg_id})

    async def reasons() -> set[str]:
        return {d["reason"] for d in await stack.dead_letters()}

    await wait_for(
        lambda: _has(reasons, "after the poison"), 15, what="the dead letter behind the poison"
    )
    assert stack.dlq.running
    failed = stack.dlq.events("loop_failed")
    assert failed, "the refused pass was not logged"
    assert {e["error_class"] for e in failed} == {"RaiseError"}
    errors = await loop_errors(stack)
    assert errors.get(("dlq-consumer", "RaiseError"), 0) >= 1, errors

    await db_execute(stack, "DROP TRIGGER test_poison ON dead_letters")
    await wait_for(lambda: _has(reasons, "poison"), 30, what="the poison, once accepted")
    assert await reasons() == {"poison", "after the poison"}
    assert stack.dlq.running


async def db_execute(stack: Stack, sql: str) -> None:
    """Run ``sql`` (several statements allowed) on this test's database."""
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _has(reasons: Any, wanted: str) -> bool:
    return wanted in await reasons()


async def loop_errors(stack: Stack) -> dict[tuple[str, str], float]:
    """``taskflow_loop_errors_total`` of the dlq-monitor, by ``(loop, error)``."""
    resp = await stack.http.get(f"http://127.0.0.1:{stack.env['DLQ_HTTP_PORT']}/metrics")
    assert resp.status_code == 200, resp.text
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            if sample.name == "taskflow_loop_errors_total":
                out[(sample.labels["loop"], sample.labels["error"])] = sample.value
    return out
