"""The task lifecycle end to end (issue 3 acceptance), services as real processes.

Clocks are scaled down from production defaults (ack wait 2 s instead of 30 s, backoff
base 0.5 s) with the same ratios between them.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import uuid
from collections.abc import AsyncIterator

import nats
import pytest

from taskflow_common.messages import TaskMessage
from tests.support.procs import ServiceFactory
from tests.support.stack import Stack, parse_ts
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

ACK_WAIT_S = 2.0
BACKOFF_BASE_S = 0.5
MAX_ATTEMPTS = 3


@pytest.fixture
def env(service_env: dict[str, str]) -> dict[str, str]:
    return service_env | {
        "WORKER_HANDLERS": "taskflow_worker.builtin,taskflow_worker.testing",
        "WORKER_ACK_WAIT": f"{ACK_WAIT_S}s",
        "WORKER_BACKOFF_BASE": f"{BACKOFF_BASE_S}s",
        "WORKER_BACKOFF_MAX": "5s",
        "WORKER_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "WORKER_CONCURRENCY": "4",
        "DISPATCHER_REAP_INTERVAL": "200ms",
    }


@pytest.fixture
async def stack(env: dict[str, str], services: ServiceFactory) -> AsyncIterator[Stack]:
    s = await Stack(services, env).start()
    try:
        yield s
    finally:
        await s.close()


async def test_demo_task_completes_with_its_payload_as_result(stack: Stack) -> None:
    task = await stack.submit("demo", {"x": 1, "words": ["a", "b"]})
    done = await stack.wait_status(task["id"])
    assert done["status"] == "completed"
    assert done["result"] == {"x": 1, "words": ["a", "b"]}
    execs = await stack.executions(task["id"])
    assert [(e["attempt"], e["status"]) for e in execs] == [(1, "succeeded")]
    assert execs[0]["worker_id"] == "worker-0"
    assert execs[0]["duration_ms"] >= 0


async def test_duplicate_deliveries_run_the_task_once(stack: Stack) -> None:
    task = await stack.submit("demo", {"n": 1})
    await stack.wait_status(task["id"])
    names = {k: stack.env[k] for k in ("NATS_SUBJECT_PREFIX", "NATS_STREAM_NAME")}
    message = TaskMessage(uuid.UUID(task["id"]), 1, 1, "normal").encode()
    nc = await nats.connect(stack.env["NATS_URL"])
    try:
        js = nc.jetstream()
        for i in range(20):
            # A distinct Nats-Msg-Id each time, so the server stores every copy.
            await js.publish(
                f"{names['NATS_SUBJECT_PREFIX']}.normal",
                message,
                headers={"Nats-Msg-Id": f"dup-{i}"},
            )
        consumer = f"{stack.env['NATS_CONSUMER_NAME']}-normal"

        async def all_consumed() -> bool:
            info = await js.consumer_info(names["NATS_STREAM_NAME"], consumer)
            return (
                info.num_pending == 0
                and info.num_ack_pending == 0
                and info.delivered.consumer_seq >= 21
            )

        await wait_for(all_consumed, 20, what="the 20 copies to be delivered and acked")
    finally:
        await nc.close()
    execs = await stack.executions(task["id"])
    assert len(execs) == 1
    assert (await stack.get(task["id"]))["status"] == "completed"


async def test_unknown_type_is_dead_lettered_and_replay_runs_it_again(stack: Stack) -> None:
    task = await stack.submit("no.such.handler", {"a": 1})
    done = await stack.wait_status(task["id"])
    assert done["status"] == "failed"
    execs = await stack.executions(task["id"])
    assert len(execs) == 1
    assert execs[0]["status"] == "failed"
    assert "no.such.handler" in execs[0]["error"]

    async def listed() -> list[dict[str, object]]:
        return [d for d in await stack.dead_letters() if d["task_id"] == task["id"]]

    letters = await wait_for(listed, 15, what="the dead letter in the dlq-monitor")
    assert len(letters) == 1
    assert "no.such.handler" in str(letters[0]["error"])

    resp = await stack.http.post(f"{stack.dlq_url}/dlq/{task['id']}/replay")
    assert resp.status_code == 200, resp.text

    async def ran_again() -> bool:
        return len(await stack.executions(task["id"])) == 2

    await wait_for(ran_again, 15, what="the replayed task to run again")
    again = await stack.wait_status(task["id"])
    assert again["status"] == "failed"
    assert [e["attempt"] for e in await stack.executions(task["id"])] == [1, 2]


async def test_transient_failures_retry_with_backoff_then_succeed(stack: Stack) -> None:
    task = await stack.submit("test.flaky", {"fail_times": 2})
    done = await stack.wait_status(task["id"])
    assert done["status"] == "completed"
    assert done["result"] == {"attempt": 3}
    execs = await stack.executions(task["id"])
    assert [e["status"] for e in execs] == ["failed", "failed", "succeeded"]
    for n, (prev, nxt) in enumerate(itertools.pairwise(execs), start=1):
        gap = (parse_ts(nxt["started_at"]) - parse_ts(prev["finished_at"])).total_seconds()  # type: ignore[operator]
        floor = BACKOFF_BASE_S * 2 ** (n - 1)
        assert gap >= floor, f"gap {gap:.3f}s after attempt {n} is under the {floor}s floor"


async def test_always_failing_task_fails_after_max_attempts_with_one_dead_letter(
    stack: Stack,
) -> None:
    task = await stack.submit("test.always_fail", {})
    done = await stack.wait_status(task["id"], timeout=30)
    assert done["status"] == "failed"
    assert done["attempts"] == MAX_ATTEMPTS
    execs = await stack.executions(task["id"])
    assert [e["status"] for e in execs] == ["failed"] * MAX_ATTEMPTS
    assert all("always fails" in e["error"] for e in execs)

    async def listed() -> list[dict[str, object]]:
        return [d for d in await stack.dead_letters() if d["task_id"] == task["id"]]

    letters = await wait_for(listed, 15, what="the dead letter")
    assert len(letters) == 1


async def test_sigterm_lets_the_running_task_finish_and_exits_zero(stack: Stack) -> None:
    worker = stack.workers[0]
    task = await stack.submit("test.sleep", {"sleep_s": 3})
    await stack.wait_status(task["id"], {"processing"}, timeout=10)
    worker.send(signal.SIGTERM)
    assert await worker.wait(timeout=15) == 0
    done = await stack.get(task["id"])
    assert done["status"] == "completed"
    # The final ack was confirmed before exit: the work-queue stream holds nothing that
    # could be redelivered to the next worker.
    info = stack.js_info()
    stream = next(x for x in info["streams"] if x["name"] == stack.env["NATS_STREAM_NAME"])
    assert stream["state"]["messages"] == 0
    await stack.start_worker()
    execs = await stack.executions(task["id"])
    assert [e["status"] for e in execs] == ["succeeded"]


async def test_task_longer_than_ack_wait_runs_once(stack: Stack) -> None:
    task = await stack.submit("test.sleep", {"sleep_s": ACK_WAIT_S * 2.5})
    done = await stack.wait_status(task["id"], timeout=30)
    assert done["status"] == "completed"
    execs = await stack.executions(task["id"])
    assert [e["status"] for e in execs] == ["succeeded"]
    info = stack.js_info()
    normal = next(c for c in info["consumers"] if c["name"].endswith("-normal"))
    assert normal["state"]["num_redelivered"] == 0


async def test_high_priority_overtakes_a_low_backlog(
    env: dict[str, str], services: ServiceFactory
) -> None:
    stack = Stack(services, env)
    await stack.start(workers=0, dlq=False)
    try:
        low = await asyncio.gather(
            *(stack.submit("demo", {"sleep_ms": 10}, priority="low") for _ in range(500))
        )
        await stack.start_worker({"WORKER_CONCURRENCY": "2"})

        async def some_low_started() -> bool:
            n = await stack.db_value("SELECT count(*) FROM task_executions")
            return n >= 10

        await wait_for(some_low_started, 20, what="the low backlog to start draining")
        high = await stack.submit("demo", {}, priority="high")
        done = await stack.wait_status(high["id"], timeout=20)
        high_started = parse_ts(done["started_at"])
        low_ids = [t["id"] for t in low]
        later = await stack.db_value(
            "SELECT count(*) FROM tasks WHERE id = ANY($1::uuid[]) "
            "AND (started_at IS NULL OR started_at > $2)",
            low_ids,
            high_started,
        )
        assert later > 100, f"only {later} low tasks started after the high one"
    finally:
        await stack.close()


async def test_tasks_submitted_while_nats_is_down_complete_after_it_returns(
    stack: Stack, nats_server: object
) -> None:
    procs = [stack.api, stack.dispatcher, stack.dlq, *stack.workers]
    pids = [p.pid for p in procs if p is not None]
    nats_server.stop()  # type: ignore[attr-defined]
    try:
        tasks = [await stack.submit("demo", {"i": i}) for i in range(5)]
        assert all(t["status"] == "queued" for t in tasks)
    finally:
        nats_server.start()  # type: ignore[attr-defined]
    await stack.wait_all([t["id"] for t in tasks], timeout=30)
    for t in tasks:
        assert (await stack.get(t["id"]))["status"] == "completed"
    assert [p.pid for p in procs if p is not None and p.running] == pids


async def test_js_info_shows_stream_and_consumers_with_configured_settings(stack: Stack) -> None:
    info = stack.js_info()
    streams = {s["name"]: s for s in info["streams"]}
    stream = streams[stack.env["NATS_STREAM_NAME"]]
    prefix = stack.env["NATS_SUBJECT_PREFIX"]
    assert sorted(stream["config"]["subjects"]) == sorted(
        f"{prefix}.{p}" for p in ("high", "normal", "low")
    )
    consumers = {c["name"]: c for c in info["consumers"]}
    for p in ("high", "normal", "low"):
        c = consumers[f"{stack.env['NATS_CONSUMER_NAME']}-{p}"]
        assert c["config"]["ack_wait"] == ACK_WAIT_S
        assert c["config"]["filter_subject"] == f"{prefix}.{p}"
