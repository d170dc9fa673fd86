"""``?wait=``, the event stream and SIGTERM with parked long polls, against real processes."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import psutil
import pytest

from tests.support.procs import ServiceFactory
from tests.support.stack import Stack, post
from tests.support.timing import floor_plus, slack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(one_slot_env: dict[str, str]) -> dict[str, str]:
    """The one-slot stack's environment (``tests/e2e/conftest.py``)."""
    return one_slot_env


@pytest.fixture
def stack(one_slot_stack: Stack) -> Stack:
    """API, dispatcher, dlq-monitor and one worker with one slot (``tests/e2e/conftest.py``)."""
    return one_slot_stack


# -- awaiting --------------------------------------------------------------------------------------


async def test_wait_on_a_500_ms_task_answers_when_it_completes(stack: Stack) -> None:
    task = await stack.submit("test.sleep", {"sleep_s": 0.5})
    started = time.monotonic()
    resp = await stack.http.get(f"{stack.api_url}/tasks/{task['id']}", params={"wait": "10s"})
    elapsed = time.monotonic() - started
    assert resp.status_code == 200
    assert resp.json()["task"]["status"] == "completed"
    print(f"?wait=10s on a 500 ms task answered after {elapsed:.3f} s")
    assert 0.5 <= elapsed < floor_plus(0.5, 1.5), f"answered after {elapsed:.3f} s"


async def test_300_parked_waiters_cost_little_cpu(stack: Stack) -> None:
    # Tasks that stay queued for the whole test (due in an hour).
    body = {"tasks": [{"type": "demo", "delay_ms": 3_600_000} for _ in range(300)]}
    resp = await post(stack, "/tasks/batch", json=body)
    ids = [item["task"]["id"] for item in resp.json()["items"]]
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        waits = [
            asyncio.create_task(
                client.get(f"{stack.api_url}/tasks/{task_id}", params={"wait": "60s"})
            )
            for task_id in ids
        ]

        async def parked() -> bool:
            health = (await stack.http.get(f"{stack.api_url}/health")).json()
            return bool(health["checks"]["events"]["waiters"] == 300)

        await wait_for(parked, 30, what="300 waiters parked in the API")
        assert stack.api is not None
        api = psutil.Process(stack.api.pid)
        before = api.cpu_times()
        await asyncio.sleep(3)  # the measurement window itself, not a synchronisation
        after = api.cpu_times()
        cpu_s = (after.user - before.user) + (after.system - before.system)
        print(f"ingest API CPU with 300 parked waiters: {cpu_s:.3f} s over 3 s")
        assert cpu_s < slack(0.3)
        assert not any(w.done() for w in waits)
        # Every waiter wakes when its task ends (here: cancelled).
        started = time.monotonic()
        for task_id in ids:
            assert (await post(stack, f"/tasks/{task_id}/cancel")).status_code == 200
        answers = await asyncio.wait_for(asyncio.gather(*waits), 30)
        assert {a.json()["task"]["status"] for a in answers} == {"cancelled"}
        assert time.monotonic() - started < slack(20)


async def test_event_stream_of_a_real_run(stack: Stack) -> None:
    task = await stack.submit("test.flaky", {"fail_times": 1}, max_attempts=2)
    seen: list[tuple[str, str]] = []
    async with stack.http.stream("GET", f"{stack.api_url}/tasks/{task['id']}/events") as resp:
        assert resp.status_code == 200
        event = ""
        async for line in resp.aiter_lines():  # ends by itself after the terminal state
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = orjson.loads(line.split(":", 1)[1])
                seen.append((event, f"{data.get('attempt', '')}{data['status']}"))
    states = [s for e, s in seen if e == "state"]
    attempts = [s for e, s in seen if e == "attempt"]
    # Each attempt's final status is shown, in order; the stream ends on the final state.
    assert [a for a in attempts if not a.endswith("started")] == ["1failed", "2succeeded"]
    assert states[-1] == "completed"
    assert seen[-1] == ("state", "completed")


async def test_sigterm_answers_parked_long_polls_at_once(
    env: dict[str, str], services: ServiceFactory
) -> None:
    api = await services.start("ingest-api", env)
    base = f"http://127.0.0.1:{env['HTTP_PORT']}/api/v1"
    async with httpx.AsyncClient(timeout=30) as client:
        task = (await client.post(f"{base}/tasks", json={"type": "demo"})).json()["task"]
        waiting = asyncio.create_task(
            client.get(f"{base}/tasks/{task['id']}", params={"wait": "60s"})
        )

        async def parked() -> bool:
            health = (await client.get(f"{base}/health")).json()
            return bool(health["checks"]["events"]["waiters"] == 1)

        await wait_for(parked, 10, what="the long poll to park")
        started = time.monotonic()
        api.terminate()
        answer = await asyncio.wait_for(waiting, 10)
        assert answer.status_code == 200
        assert answer.json()["task"]["status"] == "queued"
        assert await api.wait(10) == 0
        assert time.monotonic() - started < slack(3), "shutdown waited for the long poll"
