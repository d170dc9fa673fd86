"""js-info as a subprocess against a real NATS: JSON, tables, exit codes, read-only."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from taskflow_common import bus as bus_mod
from taskflow_common.bus import ConsumerSettings
from taskflow_common.config import CommonSettings, load
from taskflow_common.subjects import HEADER_MSG_ID, PRIORITIES
from taskflow_devstack.servers import NatsServer, free_port

pytestmark = pytest.mark.e2e

_SCRUB = {f.alias for f in CommonSettings.model_fields.values() if f.alias}


def env_for(nats_url: str, names: Mapping[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    return {**base, "NATS_URL": nats_url, **names}


async def js_info(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m taskflow_js_info *args`` without blocking the event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskflow_js_info", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def env(nats_server: NatsServer, stack_names: dict[str, str]) -> dict[str, str]:
    return env_for(nats_server.url, stack_names)


@pytest.fixture
async def bus(env: dict[str, str]) -> AsyncIterator[bus_mod.Bus]:
    async with bus_mod.connect(load(CommonSettings, env), "test-js-info") as b:
        await b.ensure_streams()
        await b.ensure_task_consumers(
            ConsumerSettings(ack_wait_s=7, max_deliver=5, max_ack_pending=20)
        )
        yield b


async def test_json_shows_streams_and_consumer_settings(
    bus: bus_mod.Bus, env: dict[str, str]
) -> None:
    names = bus.names
    for i in range(3):
        await bus.publish(names.task_subject("high"), b"{}", {HEADER_MSG_ID: f"h{i}"})
    await bus.publish(names.task_subject("low"), b"{}", {HEADER_MSG_ID: "l0"})

    done = await js_info(env, "--json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)

    assert report["server"]["version"].startswith("2.")
    assert report["server"]["supported"] is True
    streams = {s["name"]: s for s in report["streams"]}
    assert set(streams) == {names.stream, names.dlq_stream}
    assert report["missing_streams"] == []

    tasks = streams[names.stream]
    assert tasks["role"] == "tasks"
    assert tasks["config"]["subjects"] == names.task_subjects
    assert tasks["config"]["retention"] == "workqueue"
    assert tasks["config"]["storage"] == "file"
    assert tasks["config"]["duplicate_window"] == 120.0
    assert tasks["state"]["messages"] == 4
    assert tasks["state"]["bytes"] > 0
    assert tasks["state"]["subjects"] == {
        names.task_subject("high"): 3,
        names.task_subject("low"): 1,
    }

    consumers = {c["name"]: c for c in report["consumers"]}
    # Listed in priority order, each naming its stream.
    assert [c["name"] for c in report["consumers"]] == [names.consumer(p) for p in PRIORITIES]
    for priority in PRIORITIES:
        c = consumers[names.consumer(priority)]
        assert c["stream"] == names.stream
        assert c["expected"] is True
        assert c["config"]["ack_wait"] == 7.0
        assert c["config"]["max_deliver"] == 5
        assert c["config"]["max_ack_pending"] == 20
        assert c["config"]["ack_policy"] == "explicit"
        assert c["config"]["filter_subject"] == names.task_subject(priority)
        assert c["config"]["filter_subjects"] == [names.task_subject(priority)]
        assert set(c["state"]) >= {
            "num_pending",
            "num_ack_pending",
            "num_redelivered",
            "num_waiting",
        }
    assert consumers[names.consumer("high")]["state"]["num_pending"] == 3
    assert consumers[names.consumer("low")]["state"]["num_pending"] == 1
    assert consumers[names.consumer("normal")]["state"]["num_pending"] == 0

    dlq = streams[names.dlq_stream]
    assert dlq["role"] == "dead_letters"
    assert dlq["config"]["retention"] == "limits"
    assert dlq["config"]["max_age"] == 30 * 86400.0
    assert dlq["config"]["subjects"] == [names.dlq_subject]
    # The dlq-monitor has not run, so its consumer is reported missing, not created.
    assert report["missing_consumers"] == [{"stream": names.dlq_stream, "name": names.dlq_consumer}]


async def test_table_names_the_stream_and_consumers(bus: bus_mod.Bus, env: dict[str, str]) -> None:
    await bus.ensure_dlq_consumer()
    done = await js_info(env)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"Stream {bus.names.stream} (tasks)" in out
    assert f"Stream {bus.names.dlq_stream} (dead_letters)" in out
    for priority in PRIORITIES:
        assert bus.names.consumer(priority) in out
    assert bus.names.dlq_consumer in out
    assert "workqueue" in out
    assert "7s" in out  # ack wait
    assert "30d" in out  # dead-letter retention
    assert "missing" not in out


async def test_missing_stream_exits_3_and_creates_nothing(
    nats_server: NatsServer, stack_names: dict[str, str]
) -> None:
    env = env_for(nats_server.url, stack_names)
    done = await js_info(env, "--json")
    assert done.returncode == 3, done.stderr
    assert f"stream {stack_names['NATS_STREAM_NAME']} does not exist" in done.stderr
    report = json.loads(done.stdout)
    assert report["missing_streams"] == [
        stack_names["NATS_STREAM_NAME"],
        stack_names["NATS_STREAM_NAME"] + "_DLQ",
    ]
    table = await js_info(env)
    assert table.returncode == 3
    assert "does not exist" in table.stdout

    # Read-only: the streams are still not there afterwards.
    async with bus_mod.connect(load(CommonSettings, env), "test-js-info") as b:
        assert await b.stream_created_at() is None


async def test_unreachable_nats_exits_4(stack_names: dict[str, str]) -> None:
    env = env_for(f"nats://127.0.0.1:{free_port()}", stack_names)
    done = await js_info(env, "--json", "--timeout", "1")
    assert done.returncode == 4
    assert "cannot connect to NATS" in done.stderr
    assert done.stdout == ""


async def test_bad_configuration_exits_2(stack_names: dict[str, str]) -> None:
    env = env_for("nats://127.0.0.1:4222", {**stack_names, "NATS_STREAM_NAME": "no spaces"})
    done = await js_info(env)
    assert done.returncode == 2
    assert "NATS_STREAM_NAME" in done.stderr
