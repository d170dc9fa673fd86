"""taskflow_client against the real stack: both clients, every call, errors with codes.

Each scenario runs once with :class:`AsyncClient` and once with the blocking
:class:`Client` (called directly on the test's thread: it needs no event loop; the
services are separate processes).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from taskflow_client import (
    AsyncClient,
    Client,
    Conflict,
    DeadLetter,
    NewTask,
    NotFound,
    Unavailable,
    ValidationFailed,
)
from taskflow_devstack.servers import free_port
from tests.support.client_api import Api
from tests.support.procs import ServiceFactory
from tests.support.stack import Stack
from tests.support.timing import floor_plus, slack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(service_env: dict[str, str]) -> dict[str, str]:
    return service_env | {
        "WORKER_HANDLERS": "taskflow_worker.builtin,taskflow_worker.testing",
        "WORKER_BACKOFF_BASE": "200ms",
        "WORKER_BACKOFF_MAX": "1s",
        "WORKER_MAX_ATTEMPTS": "3",
        "WORKER_CONCURRENCY": "4",
        "DISPATCHER_REAP_INTERVAL": "200ms",
        # Tests leave 30 s sleeps running; do not let teardown wait for them.
        "WORKER_SHUTDOWN_GRACE": "1s",
    }


@pytest.fixture
async def stack(env: dict[str, str], services: ServiceFactory) -> AsyncIterator[Stack]:
    s = await Stack(services, env).start()
    try:
        yield s
    finally:
        await s.close()


def urls(stack: Stack) -> tuple[str, str]:
    """The ingest API and dlq-monitor roots, without ``/api/v1`` (the client adds it)."""
    return (
        f"http://127.0.0.1:{stack.env['HTTP_PORT']}",
        f"http://127.0.0.1:{stack.env['DLQ_HTTP_PORT']}",
    )


@pytest.fixture(params=["async", "sync"])
async def api(request: pytest.FixtureRequest, stack: Stack) -> AsyncIterator[Api]:
    api_url, dlq_url = urls(stack)
    if request.param == "async":
        async with AsyncClient(api_url, dlq_url, timeout=10) as aio:
            yield Api(aio=aio)
    else:
        with Client(api_url, dlq_url, timeout=10) as sync:
            yield Api(sync=sync)


def aware(value: dt.datetime | None) -> bool:
    return value is not None and value.utcoffset() is not None


# -- submit, get, wait, executions ---------------------------------------------------------


async def test_submit_wait_and_executions_are_typed(api: Api) -> None:
    task = await api.submit("demo", {"x": 1, "words": ["a", "b"]}, priority="high")
    assert isinstance(task.id, uuid.UUID)
    assert task.type == "demo"
    assert task.priority == "high"
    assert task.payload == {"x": 1, "words": ["a", "b"]}
    assert not task.terminal
    assert aware(task.created_at)
    assert aware(task.updated_at)

    done = await api.wait(task.id, timeout_s=30)
    assert done.status == "completed"
    assert done.terminal
    assert done.result == {"x": 1, "words": ["a", "b"]}
    assert aware(done.finished_at)
    assert done.raw["id"] == str(task.id)

    again = await api.get(str(task.id))
    assert again == done

    execs = await api.executions(task.id)
    assert [(e.attempt, e.status, e.task_id) for e in execs] == [(1, "succeeded", task.id)]
    assert execs[0].worker_id == "worker-0"
    assert aware(execs[0].started_at)
    assert execs[0].duration_ms is not None
    assert execs[0].duration_ms >= 0


async def test_wait_gives_the_current_state_when_its_timeout_ends(api: Api, stack: Stack) -> None:
    task = await api.submit("test.sleep", {"sleep_s": 30})
    await stack.wait_status(str(task.id), {"processing"}, timeout=15)
    started = time.monotonic()
    current = await api.wait(task.id, timeout_s=1.5)
    elapsed = time.monotonic() - started
    assert current.status == "processing"
    assert not current.terminal
    assert 1.4 <= elapsed < floor_plus(1.4, 2.6), elapsed


async def test_wait_returns_soon_after_a_short_task_finishes(api: Api) -> None:
    task = await api.submit("demo", {"sleep_ms": 500})
    started = time.monotonic()
    done = await api.wait(task.id, timeout_s=10)
    elapsed = time.monotonic() - started
    assert done.status == "completed"
    assert elapsed < slack(3.0), elapsed


async def test_idempotency_key_replays_the_first_task(api: Api) -> None:
    key = f"order-{uuid.uuid4()}"
    first = await api.submit("demo", {"n": 1}, idempotency_key=key)
    second = await api.submit("demo", {"n": 1}, idempotency_key=key)
    assert second.id == first.id
    with pytest.raises(Conflict) as info:
        await api.submit("demo", {"n": 2}, idempotency_key=key)
    assert (info.value.status, info.value.code) == (409, "idempotency_key_reused")


# -- listing -------------------------------------------------------------------------------


async def test_list_iterates_every_page_newest_first(api: Api, stack: Stack) -> None:
    submitted = [await api.submit("demo", {"i": i}, priority="low") for i in range(7)]
    ids = [t.id for t in submitted]
    # Pages of 3 (the server returns at most 3 per request): 7 tasks take three pages.
    listed = await api.list(priority="low", page_size=3)
    assert [t.id for t in listed] == list(reversed(ids))
    limited = await api.list(priority="low", page_size=3, limit=5)
    assert [t.id for t in limited] == list(reversed(ids))[:5]
    await stack.wait_all([str(i) for i in ids])
    completed = await api.list(status="completed", priority="low", page_size=2)
    assert {t.id for t in completed} == set(ids)
    assert all(t.status == "completed" for t in completed)


async def test_list_filters_by_tag(api: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    tagged = await api.submit("demo", {}, tags={"batch": tag, "team": "a"})
    await api.submit("demo", {}, tags={"batch": "other"})
    assert tagged.tags == {"batch": tag, "team": "a"}
    found = await api.list(tags={"batch": tag})
    assert [t.id for t in found] == [tagged.id]


# -- per-task options and batches ----------------------------------------------------------


async def test_submit_options_are_stored(api: Api) -> None:
    before = dt.datetime.now(dt.UTC)
    delayed = await api.submit(
        "demo", {"d": 1}, delay_ms=60_000, timeout_s=12.5, max_attempts=2, tags={"k": "v"}
    )
    assert delayed.status == "queued"
    assert delayed.max_attempts == 2
    assert delayed.timeout_s == 12.5
    assert delayed.tags == {"k": "v"}
    assert delayed.run_at is not None
    assert delayed.run_at >= before + dt.timedelta(seconds=59)
    at = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    scheduled = await api.submit("demo", {"d": 2}, run_at=at)
    assert scheduled.run_at is not None
    assert abs((scheduled.run_at - at).total_seconds()) < 0.01


async def test_submit_batch_in_order_with_keys_and_all_or_nothing(api: Api) -> None:
    key = f"b-{uuid.uuid4()}"
    created = await api.submit_batch(
        [
            NewTask("demo", {"i": 0}),
            NewTask("demo", {"i": 1}, priority="high", idempotency_key=key),
            NewTask("demo", {"i": 2}, tags={"t": "x"}),
        ]
    )
    assert [t.payload for t in created] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert created[1].priority == "high"
    assert created[2].tags == {"t": "x"}
    replay = await api.submit_batch(
        [NewTask("demo", {"i": 1}, priority="high", idempotency_key=key)]
    )
    assert [t.id for t in replay] == [created[1].id]

    marker = uuid.uuid4().hex
    with pytest.raises(ValidationFailed) as info:
        await api.submit_batch(
            [NewTask("demo", {"m": marker}), NewTask("not a valid type!", {"m": marker})]
        )
    assert info.value.status == 422
    assert info.value.code == "validation_error"
    assert [e.field for e in info.value.errors] == ["tasks[1].type"]
    assert info.value.problem["index"] == 1
    assert not [t for t in await api.list(type="demo", limit=200) if t.payload == {"m": marker}]

    for task in created:
        assert (await api.wait(task.id)).status == "completed"


# -- cancel, retry, dead letters, replay ---------------------------------------------------


async def test_cancel_a_queued_task_then_retry_it(api: Api) -> None:
    task = await api.submit("demo", {"c": 1}, delay_ms=60_000)
    cancelled = await api.cancel(task.id)
    assert cancelled.status == "cancelled"
    assert cancelled.terminal
    with pytest.raises(Conflict) as info:
        await api.cancel(task.id)
    assert (info.value.status, info.value.code) == (409, "invalid_state")
    assert await api.executions(task.id) == []

    queued = await api.retry(task.id)
    assert queued.status == "queued"
    done = await api.wait(task.id, timeout_s=90)
    assert done.status == "completed"
    with pytest.raises(Conflict) as again:
        await api.retry(task.id)
    assert again.value.code == "invalid_state"


async def test_cancel_a_running_task(api: Api, stack: Stack) -> None:
    task = await api.submit("test.sleep", {"sleep_s": 30})
    await stack.wait_status(str(task.id), {"processing"}, timeout=15)
    await api.cancel(task.id)
    done = await api.wait(task.id, timeout_s=5)
    assert done.status == "cancelled"
    execs = await api.executions(task.id)
    assert [e.status for e in execs] == ["cancelled"]


async def test_retry_runs_a_failed_task_again(api: Api) -> None:
    task = await api.submit("test.flaky", {"fail_times": 1}, max_attempts=1)
    failed = await api.wait(task.id)
    assert failed.status == "failed"
    assert failed.last_error
    await api.retry(task.id)
    done = await api.wait(task.id)
    assert done.status == "completed"
    assert done.result == {"attempt": 2}
    assert [(e.attempt, e.status) for e in await api.executions(task.id)] == [
        (1, "failed"),
        (2, "succeeded"),
    ]


async def test_dead_letters_pages_and_replay(api: Api) -> None:
    tasks = [await api.submit("fail", {"reason": f"boom {i}"}) for i in range(3)]
    for t in tasks:
        assert (await api.wait(t.id)).status == "failed"
    ids = {t.id for t in tasks}

    async def all_listed() -> list[DeadLetter]:
        letters = await api.dead_letters(type="fail", page_size=1)
        return letters if {d.task_id for d in letters} == ids else []

    letters = await wait_for(all_listed, 20, what="three dead letters, one per page")
    assert len(letters) == 3
    assert all(d.status == "open" and aware(d.failed_at) for d in letters)
    errors = {d.task_id: d.error or "" for d in letters}
    for i, t in enumerate(tasks):
        assert f"boom {i}" in errors[t.id]
    assert len(await api.dead_letters(type="fail", page_size=1, limit=2)) == 2

    replayed = await api.replay(tasks[0].id)
    assert replayed.id == tasks[0].id
    assert replayed.status == "queued"
    assert (await api.wait(tasks[0].id)).status == "failed"
    assert [e.attempt for e in await api.executions(tasks[0].id)] == [1, 2]

    async def marked_replayed() -> bool:
        mine = [d for d in await api.dead_letters(type="fail") if d.task_id == tasks[0].id]
        return sorted(d.status for d in mine) == ["open", "replayed"]

    await wait_for(marked_replayed, 20, what="the first dead letter marked replayed")

    completed = await api.submit("demo", {})
    await api.wait(completed.id)
    with pytest.raises(Conflict) as info:
        await api.replay(completed.id)
    assert (info.value.status, info.value.code) == (409, "invalid_state")
    with pytest.raises(NotFound):
        await api.replay(uuid.uuid4())


# -- errors ----------------------------------------------------------------------------------


async def test_errors_carry_the_problem_code(api: Api) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFound) as nf:
        await api.get(missing)
    assert (nf.value.status, nf.value.code) == (404, "not_found")
    assert isinstance(nf.value, LookupError)
    with pytest.raises(NotFound):
        await api.executions(missing)
    with pytest.raises(NotFound):
        await api.cancel(missing)

    with pytest.raises(ValidationFailed) as bad:
        await api.submit("not a valid type!", {}, max_attempts=1000)
    assert (bad.value.status, bad.value.code) == (422, "validation_error")
    assert isinstance(bad.value, ValueError)
    assert {e.field for e in bad.value.errors} == {"type", "max_attempts"}

    with pytest.raises(ValidationFailed) as payload:
        await api.submit("demo", {"big": 2**70})
    assert [e.field for e in payload.value.errors] == ["payload.big"]

    with pytest.raises(ValidationFailed) as bad_id:
        await api.get("not-a-uuid")
    assert bad_id.value.code == "invalid_id"


async def test_unavailable_when_nothing_listens(api: Api, stack: Stack) -> None:
    assert stack.api is not None
    await stack.api.stop()
    with pytest.raises(Unavailable) as info:
        await api.get(uuid.uuid4())
    assert info.value.code == "unreachable"
    assert info.value.status is None
    assert isinstance(info.value, ConnectionError)
    with pytest.raises(Unavailable):
        await api.submit("demo", {})


async def test_unavailable_when_the_database_is_gone(
    env: dict[str, str], services: ServiceFactory
) -> None:
    # The API is up but its database does not exist: the API answers 503 unavailable.
    broken = env | {"DATABASE_URL": env["DATABASE_URL"].rsplit("/", 1)[0] + "/no_such_db"}
    await services.start("ingest-api", broken, ready=False)
    url = f"http://127.0.0.1:{env['HTTP_PORT']}"
    async with AsyncClient(url, timeout=10) as aio:

        async def answered() -> Unavailable | None:
            try:
                await aio.get(uuid.uuid4())
            except Unavailable as exc:
                return exc if exc.status is not None else None
            return None

        exc = await wait_for(answered, 20, what="a 503 from the API")
    assert exc is not None
    assert (exc.status, exc.code) == (503, "unavailable")


def test_client_rejects_what_it_cannot_send() -> None:
    with Client(f"http://127.0.0.1:{free_port()}") as sync:
        with pytest.raises(ValidationFailed) as info:
            sync.get("../../etc")
        assert info.value.code == "invalid_id"
        assert info.value.status is None
        with pytest.raises(ValueError, match="run_at"):
            sync.submit("demo", {}, run_at=dt.datetime(2030, 1, 1))  # noqa: DTZ001 - naive on purpose
        with pytest.raises(ValueError, match="page_size"):
            list(sync.list(page_size=0))
