"""Schedules through REST with real processes: ticks that complete, pause/resume, run now,
the overlap policies with a slow handler, and bad input refused with nothing stored."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.procs import ServiceFactory
from tests.support.stack import Stack, parse_ts
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
async def stack(service_env: dict[str, str], services: ServiceFactory) -> AsyncIterator[Stack]:
    env = service_env | {
        "WORKER_HANDLERS": "taskflow_worker.builtin,taskflow_worker.testing",
        "WORKER_CONCURRENCY": "10",
        "WORKER_SHUTDOWN_GRACE": "1s",
    }
    s = await Stack(services, env).start(dlq=False)
    try:
        yield s
    finally:
        await s.close()


async def create(stack: Stack, expect: int = 201, **body: Any) -> dict[str, Any]:
    resp = await stack.http.post(f"{stack.api_url}/schedules", json=body)
    assert resp.status_code == expect, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def post(stack: Stack, path: str, expect: int = 200) -> dict[str, Any]:
    resp = await stack.http.post(f"{stack.api_url}/schedules/{path}")
    assert resp.status_code == expect, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def tasks_of(stack: Stack, name: str) -> list[dict[str, Any]]:
    """The schedule's tasks through ``GET /tasks?schedule=``, oldest tick first."""
    resp = await stack.http.get(f"{stack.api_url}/tasks", params={"schedule": name, "limit": 200})
    assert resp.status_code == 200, resp.text
    return sorted(resp.json()["items"], key=lambda t: t["scheduled_for"])


async def test_a_one_second_schedule_makes_tasks_that_complete(stack: Stack) -> None:
    made = await create(stack, name="tick", every="1s", task={"type": "demo", "payload": {}})
    assert made["schedule"]["every"] == "1s"

    async def three_done() -> list[dict[str, Any]] | None:
        done = [t for t in await tasks_of(stack, "tick") if t["status"] == "completed"]
        return done if len(done) >= 3 else None

    done = await wait_for(three_done, 20, interval=0.2, what="three completed ticks")
    ticks = [parse_ts(t["scheduled_for"]) for t in done]
    assert all(t is not None and t.microsecond == 0 for t in ticks)  # whole seconds
    assert len(set(ticks)) == len(ticks)
    assert {t["schedule"] for t in done} == {"tick"}
    one = await stack.get(done[0]["id"])
    assert (one["schedule"], one["scheduled_for"]) == ("tick", done[0]["scheduled_for"])
    got = (await stack.http.get(f"{stack.api_url}/schedules/tick")).json()["schedule"]
    assert got["last_fire_at"] is not None
    assert got["last_run_status"] is not None
    assert parse_ts(got["next_fire_at"]) > parse_ts(got["last_fire_at"])  # type: ignore[operator]


async def test_pause_stops_ticks_resume_starts_them_and_run_now_makes_one(stack: Stack) -> None:
    await create(stack, name="p", every="1s", task={"type": "demo"})
    await wait_for(lambda: _count(stack, "p", 2), 15, interval=0.2, what="two ticks")
    assert (await post(stack, "p/pause"))["schedule"]["paused"] is True
    before = len(await tasks_of(stack, "p"))
    await asyncio.sleep(2.5)
    assert len(await tasks_of(stack, "p")) == before  # no tick while paused

    asked = dt.datetime.now(dt.UTC)
    run = await post(stack, "p/run", expect=201)
    task = run["task"]
    assert task["schedule"] == "p"
    assert abs(parse_ts(task["scheduled_for"]) - asked) < dt.timedelta(seconds=2)  # type: ignore[operator]
    assert len(await tasks_of(stack, "p")) == before + 1  # exactly one, now
    await stack.wait_status(task["id"], {"completed"})

    await post(stack, "p/resume")
    await wait_for(
        lambda: _count(stack, "p", before + 3), 15, interval=0.2, what="ticks after resume"
    )
    ticks = [t["scheduled_for"] for t in await tasks_of(stack, "p")]
    assert len(ticks) == len(set(ticks))


async def _count(stack: Stack, name: str, at_least: int) -> bool:
    return len(await tasks_of(stack, name)) >= at_least


@pytest.mark.slow
async def test_every_overlap_policy_with_a_slow_handler(stack: Stack) -> None:
    slow = {"type": "test.sleep", "payload": {"sleep_s": 2.5}}
    for policy in ("allow", "skip", "queue"):
        await create(stack, name=f"o-{policy}", every="1s", overlap=policy, task=slow)
    await asyncio.sleep(9)
    runs: dict[str, list[dict[str, Any]]] = {}
    for policy in ("allow", "skip", "queue"):
        await post(stack, f"o-{policy}/pause")
        runs[policy] = await tasks_of(stack, f"o-{policy}")

    def overlapping(tasks: list[dict[str, Any]]) -> int:
        """Ticks created while the previous tick's task had not finished."""
        n = 0
        for before, after in itertools.pairwise(tasks):
            finished = parse_ts(before["finished_at"])
            if finished is None or parse_ts(after["created_at"]) < finished:  # type: ignore[operator]
                n += 1
        return n

    assert len(runs["allow"]) >= 6, len(runs["allow"])  # about one a second
    assert overlapping(runs["allow"]) >= 3
    for policy in ("skip", "queue"):
        assert 2 <= len(runs[policy]) <= 4, (policy, len(runs[policy]))
        assert overlapping(runs[policy]) == 0, policy
    # queue fires the waiting tick as soon as the run ends (late), skip waits for a new one.
    queued = runs["queue"]
    for before, after in itertools.pairwise(queued):
        gap = parse_ts(after["created_at"]) - parse_ts(before["finished_at"])  # type: ignore[operator]
        assert gap < dt.timedelta(seconds=1), gap
        assert parse_ts(after["scheduled_for"]) < parse_ts(before["finished_at"])  # type: ignore[operator]


async def test_bad_input_is_refused_and_nothing_is_stored(stack: Stack) -> None:
    task = {"type": "demo"}
    for body, field in [
        ({"name": "b", "cron": "99 * * * *", "task": task}, "cron"),
        (
            {"name": "b", "cron": "0 3 * * *", "timezone": "Europe/Atlantis", "task": task},
            "timezone",
        ),
        ({"name": "b", "every": "999ms", "task": task}, "every"),
        ({"name": "b", "every": "1s", "overlap": "maybe", "task": task}, "overlap"),
    ]:
        doc = await create(stack, 422, **body)
        assert doc["code"] == "validation_error"
        assert field in [e["field"] for e in doc["errors"]]
    assert await stack.db_value("SELECT count(*) FROM schedules") == 0
    await create(stack, name="b", cron="0 3 * * *", timezone="Europe/Berlin", task=task)
    doc = await create(stack, 409, name="b", every="1s", task=task)
    assert doc["code"] == "schedule_exists"
    assert await stack.db_value("SELECT count(*) FROM schedules") == 1
    assert await stack.db_value("SELECT cron FROM schedules") == "0 3 * * *"
    assert await stack.db_value("SELECT count(*) FROM tasks") == 0
    resp = await stack.http.get(f"{stack.api_url}/schedules/nope")
    assert resp.status_code == 404
    assert resp.json()["code"] == "not_found"
