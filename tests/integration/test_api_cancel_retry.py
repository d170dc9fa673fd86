"""Cancel and retry in-process; where a worker would act, the test runs the worker's own
SQL (:mod:`taskflow_common.store.attempts`) on the test database.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import falcon.inspect
import falcon.testing
import nats

from taskflow_common.messages import CancelRequest
from taskflow_common.store import attempts
from taskflow_common.store import claims as claim_store
from taskflow_common.subjects import Names
from taskflow_devstack.servers import NatsServer
from tests.support.api import (
    TASKS,
    assert_problem,
    claim_first,
    submit_task,
)
from tests.support.waiting import wait_for

# -- cancel and retry ------------------------------------------------------------------------


async def test_cancel_a_queued_task(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await submit_task(api)
    result = await api.simulate_post(f"{TASKS}/{task['id']}/cancel")
    assert result.status_code == 200, result.text
    done = result.json["task"]
    assert (done["status"], done["version"]) == ("cancelled", task["version"] + 1)
    assert done["finished_at"] is not None
    row = await db.fetchrow(
        "SELECT dispatch_pending FROM tasks WHERE id = $1", uuid.UUID(task["id"])
    )
    assert row["dispatch_pending"] is False, "the dispatcher must never publish it"
    # A copy already on the bus cannot claim it.
    refusal = await claim_store.claim(db, uuid.UUID(task["id"]), 1, "w", 30.0)
    assert isinstance(refusal, claim_store.Refusal)
    assert refusal.verdict == "already_done"
    again = await api.simulate_post(f"{TASKS}/{task['id']}/cancel")
    assert "cancelled" in assert_problem(again, 409, "invalid_state")["detail"]
    assert_problem(await api.simulate_post(f"{TASKS}/{uuid.uuid4()}/cancel"), 404, "not_found")
    assert_problem(await api.simulate_post(f"{TASKS}/nope/cancel"), 400, "invalid_id")


async def test_cancel_a_running_task_closes_its_attempt_and_tells_the_workers(
    api: falcon.testing.ASGIConductor,
    db: asyncpg.Connection,
    nats_server: NatsServer,
    stack_names: dict[str, str],
) -> None:
    names = Names(stack_names["NATS_STREAM_NAME"], "", stack_names["NATS_SUBJECT_PREFIX"], "")
    nc = await nats.connect(nats_server.url)
    heard: asyncio.Queue[CancelRequest] = asyncio.Queue()

    async def on_cancel(msg: Any) -> None:
        heard.put_nowait(CancelRequest.decode(msg.data))

    try:
        await nc.subscribe(names.cancel_subject, cb=on_cancel)
        await nc.flush()
        task = await submit_task(api)
        claim = await claim_first(db, task["id"])
        await _health_nats_ok(api)
        result = await api.simulate_post(f"{TASKS}/{task['id']}/cancel")
        assert result.status_code == 200, result.text
        assert result.json["task"]["status"] == "cancelled"
        request = await asyncio.wait_for(heard.get(), 5)
        assert request.task_id == uuid.UUID(task["id"])
    finally:
        await nc.close()
    execution = await db.fetchrow(
        "SELECT status, error, finished_at FROM task_executions WHERE task_id = $1",
        claim.task_id,
    )
    assert (execution["status"], execution["error"]) == ("cancelled", "cancelled by request")
    assert execution["finished_at"] is not None
    # The worker's late success is fenced: the task stays cancelled.
    assert await attempts.succeed(db, claim.task_id, claim.attempt, "1") is False
    assert (await api.simulate_get(f"{TASKS}/{task['id']}")).json["task"]["status"] == "cancelled"


async def _health_nats_ok(client: falcon.testing.ASGIConductor) -> None:
    async def ok() -> bool:
        return bool((await client.simulate_get("/api/v1/health")).json["checks"]["nats"]["ok"])

    await wait_for(ok, 10, what="the API's NATS connection")


async def test_a_completion_that_commits_first_wins_over_cancel(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await submit_task(api)
    claim = await claim_first(db, task["id"])
    assert await attempts.succeed(db, claim.task_id, claim.attempt, '{"ok": true}')
    result = await api.simulate_post(f"{TASKS}/{task['id']}/cancel")
    assert "completed" in assert_problem(result, 409, "invalid_state")["detail"]


async def test_retry_a_failed_task_keeps_its_history(
    api: falcon.testing.ASGIConductor, db: asyncpg.Connection
) -> None:
    task = await submit_task(api, max_attempts=1)
    claim = await claim_first(db, task["id"])
    failure = await attempts.fail(
        db,
        claim.task_id,
        claim.attempt,
        error="boom",
        error_type="RuntimeError",
        permanent=False,
        backoff_s=1,
    )
    assert failure is not None
    assert failure.status == "failed"
    result = await api.simulate_post(f"{TASKS}/{task['id']}/retry")
    assert result.status_code == 200, result.text
    retried = result.json["task"]
    assert (retried["status"], retried["attempts"], retried["failed_attempts"]) == ("queued", 1, 0)
    executions = (await api.simulate_get(f"{TASKS}/{task['id']}/executions")).json["items"]
    assert [(e["attempt"], e["status"]) for e in executions] == [(1, "failed")]
    # The next claim numbers on from the last attempt.
    row = await db.fetchrow("SELECT dispatch_seq FROM tasks WHERE id = $1", uuid.UUID(task["id"]))
    second = await claim_store.claim(db, claim.task_id, row["dispatch_seq"] + 1, "w", 30.0)
    assert isinstance(second, claim_store.Claim)
    assert second.attempt == 2
    again = await api.simulate_post(f"{TASKS}/{task['id']}/retry")
    assert "processing" in assert_problem(again, 409, "invalid_state")["detail"]
    assert_problem(await api.simulate_post(f"{TASKS}/{uuid.uuid4()}/retry"), 404, "not_found")


async def test_retry_a_cancelled_task(api: falcon.testing.ASGIConductor) -> None:
    task = await submit_task(api)
    assert (await api.simulate_post(f"{TASKS}/{task['id']}/cancel")).status_code == 200
    result = await api.simulate_post(f"{TASKS}/{task['id']}/retry")
    assert result.status_code == 200, result.text
    assert result.json["task"]["status"] == "queued"
    assert result.json["task"]["finished_at"] is None
