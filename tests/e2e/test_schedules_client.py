"""Schedules through the Python clients and the ``taskflow schedules`` CLI (the API as a
real process; no dispatcher, so nothing fires by itself)."""

from __future__ import annotations

import datetime as dt

import pytest

from taskflow_client import AsyncClient, Client, Conflict, NotFound, ValidationFailed
from tests.e2e.test_cli import as_json, taskflow
from tests.support.procs import ServiceFactory

pytestmark = pytest.mark.e2e


@pytest.fixture
async def api_url(service_env: dict[str, str], services: ServiceFactory) -> str:
    await services.start("ingest-api", service_env)
    return f"http://127.0.0.1:{service_env['HTTP_PORT']}"


async def test_async_client_manages_a_schedule(api_url: str) -> None:
    async with AsyncClient(api_url) as tf:
        made = await tf.create_schedule(
            "nightly",
            "demo",
            {"x": 1},
            cron="30 2 * * *",
            timezone="Europe/Berlin",
            missed="catch_up",
            catch_up_max=2,
            tags={"team": "a"},
        )
        assert (made.cron, made.timezone, made.every_s) == ("30 2 * * *", "Europe/Berlin", None)
        assert (made.missed, made.catch_up_max, made.overlap) == ("catch_up", 2, "allow")
        assert made.next_fire_at.tzinfo is not None
        with pytest.raises(Conflict) as conflict:
            await tf.create_schedule("nightly", "demo", every="1m")
        assert conflict.value.code == "schedule_exists"
        with pytest.raises(ValidationFailed) as invalid:
            await tf.create_schedule("x", "demo", every=dt.timedelta(milliseconds=500))
        assert [e.field for e in invalid.value.errors] == ["every"]

        changed = await tf.update_schedule("nightly", every="90s", task={"payload": {"y": 2}})
        assert (changed.cron, changed.every_s, changed.payload) == (None, 90, {"y": 2})
        assert (await tf.pause_schedule("nightly")).paused
        assert [s.name async for s in tf.schedules(paused=True)] == ["nightly"]
        task = await tf.run_schedule("nightly")
        assert (task.schedule, task.payload) == ("nightly", {"y": 2})
        assert task.scheduled_for is not None
        assert [t.id async for t in tf.list(schedule="nightly")] == [task.id]
        resumed = await tf.resume_schedule("nightly")
        assert not resumed.paused
        assert resumed.last_task_id == task.id
        assert resumed.last_run_status == "queued"
        await tf.delete_schedule("nightly")
        with pytest.raises(NotFound):
            await tf.get_schedule("nightly")


async def test_sync_client_lists_every_page(api_url: str) -> None:
    with Client(api_url) as tf:
        for i in range(5):
            tf.create_schedule(f"s{i}", "demo", every=f"{i + 1}m")
        assert [s.name for s in tf.schedules(page_size=2)] == [f"s{i}" for i in range(5)]
        assert [s.every_s for s in tf.schedules(limit=2)] == [60, 120]
        with pytest.raises(NotFound):
            tf.run_schedule("missing")


async def test_cli_schedules_commands_and_exit_codes(api_url: str) -> None:
    env = {"TASKFLOW_API_URL": api_url}
    made = await taskflow(
        env, "schedules", "create", "c1", "demo", '{"a": 1}', "--every", "30s", "--json"
    )
    assert made.returncode == 0, made.stderr
    assert as_json(made)["every"] == "30s"
    berlin = await taskflow(
        env, "schedules", "create", "c2", "demo", "--cron", "0 9 * * MON",
        "--timezone", "Europe/Berlin", "--overlap", "skip",
    )  # fmt: skip
    assert berlin.returncode == 0, berlin.stderr
    assert "0 9 * * MON (Europe/Berlin)" in berlin.stdout

    listed = await taskflow(env, "schedules", "list", "--json")
    assert [s["name"] for s in as_json(listed)] == ["c1", "c2"]
    table = await taskflow(env, "schedules", "list")
    assert "every 30s" in table.stdout
    assert "c2" in table.stdout

    updated = await taskflow(env, "schedules", "update", "c1", "--every", "1m", "--json")
    assert as_json(updated)["every"] == "60s"
    paused = await taskflow(env, "schedules", "pause", "c1", "--json")
    assert as_json(paused)["paused"] is True
    run = await taskflow(env, "schedules", "run", "c1", "--json")
    assert run.returncode == 0, run.stderr
    assert as_json(run)["schedule"] == "c1"
    shown = await taskflow(env, "schedules", "get", "c1")
    assert "paused" in shown.stdout
    assert "queued" in shown.stdout  # the last run's status
    resumed = await taskflow(env, "schedules", "resume", "c1", "--json")
    assert as_json(resumed)["paused"] is False

    bad = await taskflow(env, "schedules", "create", "c3", "demo", "--cron", "61 * * * *")
    assert bad.returncode == 2
    assert "cron" in bad.stderr
    dup = await taskflow(env, "schedules", "create", "c1", "demo", "--every", "5s")
    assert dup.returncode == 5
    assert "already exists" in dup.stderr
    deleted = await taskflow(env, "schedules", "delete", "c1")
    assert deleted.returncode == 0
    missing = await taskflow(env, "schedules", "get", "c1")
    assert missing.returncode == 3
