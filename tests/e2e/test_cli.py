"""The ``taskflow`` command as a subprocess against the real stack: output and exit codes.

Exit codes under test: 0 ok, 1 waited-for task failed/cancelled, 2 usage, 3 not found,
4 unavailable, 5 refused (409), 6 wait timed out with the task still running.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import sys
import sysconfig
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from taskflow_common.config import CommonSettings
from taskflow_devstack.servers import free_port
from tests.support.procs import ServiceFactory
from tests.support.stack import Stack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

_SCRUB = {f.alias for f in CommonSettings.model_fields.values() if f.alias} | {
    "TASKFLOW_API_URL",
    "TASKFLOW_DLQ_URL",
}


async def taskflow(
    env: Mapping[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m taskflow_client *args`` (stdout/stderr captured, not a TTY)."""
    base = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskflow_client", *args],
        env={**base, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> Any:
    """Parse stdout; on failure show what the command printed."""
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(
            f"not JSON (rc {proc.returncode}): {proc.stdout!r} {proc.stderr!r}"
        ) from None


@pytest.fixture
async def stack(service_env: dict[str, str], services: ServiceFactory) -> AsyncIterator[Stack]:
    env = service_env | {
        "WORKER_HANDLERS": "taskflow_worker.builtin,taskflow_worker.testing",
        "WORKER_SHUTDOWN_GRACE": "1s",
    }
    s = await Stack(services, env).start()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def cli_env(stack: Stack) -> dict[str, str]:
    """The CLI's URLs through its environment variables."""
    return {
        "TASKFLOW_API_URL": f"http://127.0.0.1:{stack.env['HTTP_PORT']}",
        "TASKFLOW_DLQ_URL": f"http://127.0.0.1:{stack.env['DLQ_HTTP_PORT']}",
    }


async def test_submit_wait_prints_the_result_and_exits_0(cli_env: dict[str, str]) -> None:
    proc = await taskflow(cli_env, "submit", "demo", '{"x":1}', "--wait")
    assert proc.returncode == 0, proc.stderr
    assert "completed" in proc.stdout
    assert '{"x": 1}' in proc.stdout  # the result row
    assert proc.stderr == ""  # no spinner off a terminal

    done = as_json(await taskflow(cli_env, "submit", "demo", '{"x":1}', "--wait", "--json"))
    assert done["status"] == "completed"
    assert done["result"] == {"x": 1}


async def test_spinner_goes_to_stderr_only_on_a_terminal(cli_env: dict[str, str]) -> None:
    base = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    argv = ["submit", "demo", '{"sleep_ms": 1000}', "--wait", "--json"]
    primary, secondary = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "taskflow_client",
            *argv,
            env={**base, **cli_env, "TERM": "xterm"},
            stdout=subprocess.PIPE,
            stderr=secondary,
        )
    finally:
        os.close(secondary)  # the child holds the only copy now: EOF when it exits
    # Read the terminal while the command runs, so a full pty buffer never blocks it.
    terminal, (stdout, _) = await asyncio.wait_for(
        asyncio.gather(asyncio.to_thread(_drain, primary), proc.communicate()), 60
    )
    assert proc.returncode == 0
    assert json.loads(stdout)["status"] == "completed"  # stdout stays clean JSON
    assert "waiting for task" in terminal


def _drain(fd: int) -> str:
    """Read what was written to a pty until its other end is closed."""
    chunks: list[bytes] = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:  # EIO: every writer has closed the terminal
        pass
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


async def test_submit_wait_on_a_failing_task_exits_1(cli_env: dict[str, str]) -> None:
    proc = await taskflow(cli_env, "submit", "fail", '{"reason": "nope"}', "--wait", "--json")
    assert proc.returncode == 1, proc.stderr
    task = as_json(proc)
    assert task["status"] == "failed"
    assert "nope" in task["last_error"]
    assert "failed" in proc.stderr

    again = await taskflow(cli_env, "wait", task["id"])
    assert again.returncode == 1
    assert "failed" in again.stdout


async def test_get_list_executions_as_json_and_tables(cli_env: dict[str, str]) -> None:
    submitted = as_json(
        await taskflow(
            cli_env, "submit", "demo", "-", "--priority", "low", "--json", stdin='{"s": [1, 2]}'
        )
    )
    assert submitted["status"] == "queued"
    assert submitted["payload"] == {"s": [1, 2]}
    task_id = submitted["id"]
    assert (await taskflow(cli_env, "wait", task_id)).returncode == 0

    got = as_json(await taskflow(cli_env, "get", task_id, "--json"))
    assert (got["id"], got["status"], got["priority"]) == (task_id, "completed", "low")
    table = await taskflow(cli_env, "get", task_id)
    assert table.returncode == 0
    assert task_id in table.stdout
    assert "completed" in table.stdout

    listed = as_json(await taskflow(cli_env, "list", "--status", "completed", "--json"))
    assert [t["id"] for t in listed] == [task_id]
    rows = await taskflow(cli_env, "list")
    assert task_id in rows.stdout

    execs = as_json(await taskflow(cli_env, "executions", task_id, "--json"))
    assert [(e["attempt"], e["status"]) for e in execs] == [(1, "succeeded")]
    assert "succeeded" in (await taskflow(cli_env, "executions", task_id)).stdout


async def test_not_found_exits_3(cli_env: dict[str, str]) -> None:
    missing = str(uuid.uuid4())
    for command in ("get", "wait", "executions", "cancel", "retry"):
        proc = await taskflow(cli_env, command, missing)
        assert proc.returncode == 3, (command, proc.stdout, proc.stderr)
        assert "not_found" in proc.stderr
    assert (await taskflow(cli_env, "dlq", "replay", missing)).returncode == 3


async def test_unavailable_exits_4(cli_env: dict[str, str]) -> None:
    down = {
        "TASKFLOW_API_URL": f"http://127.0.0.1:{free_port()}",
        "TASKFLOW_DLQ_URL": f"http://127.0.0.1:{free_port()}",
    }
    proc = await taskflow(down, "get", str(uuid.uuid4()))
    assert proc.returncode == 4
    assert "unreachable" in proc.stderr
    assert (await taskflow(down, "submit", "demo", "--wait")).returncode == 4
    assert (await taskflow(down, "dlq", "list")).returncode == 4
    # The option wins over the environment variable.
    ok = await taskflow(down, "list", "--json", "--api-url", cli_env["TASKFLOW_API_URL"])
    assert ok.returncode == 0, ok.stderr
    assert as_json(ok) == []


async def test_usage_errors_exit_2(cli_env: dict[str, str]) -> None:
    bad_json = await taskflow(cli_env, "submit", "demo", "{not json")
    assert bad_json.returncode == 2
    assert "PAYLOAD_JSON" in bad_json.stderr
    assert (await taskflow(cli_env, "get", "not-a-uuid")).returncode == 2
    assert (await taskflow(cli_env, "submit", "demo", "--priority", "urgent")).returncode == 2
    assert (await taskflow(cli_env, "submit", "demo", "--tag", "novalue")).returncode == 2
    assert (await taskflow(cli_env, "nosuchcommand")).returncode == 2
    rejected = await taskflow(cli_env, "submit", "not a type!", "{}")
    assert rejected.returncode == 2
    assert "validation_error" in rejected.stderr
    assert "type:" in rejected.stderr


async def test_wait_timeout_with_the_task_still_running_exits_6(
    cli_env: dict[str, str], stack: Stack
) -> None:
    task = as_json(await taskflow(cli_env, "submit", "test.sleep", '{"sleep_s": 30}', "--json"))
    await stack.wait_status(task["id"], {"processing"}, timeout=15)
    proc = await taskflow(cli_env, "wait", task["id"], "--timeout", "1", "--json")
    assert proc.returncode == 6
    assert as_json(proc)["status"] == "processing"
    assert "still processing" in proc.stderr


async def test_cancel_retry_with_conflicts_exiting_5(cli_env: dict[str, str]) -> None:
    task = as_json(
        await taskflow(
            cli_env, "submit", "demo", "{}", "--delay-ms", "60000", "--tag", "k=v", "--json"
        )
    )
    assert task["tags"] == {"k": "v"}
    tagged = as_json(await taskflow(cli_env, "list", "--tag", "k=v", "--json"))
    assert [t["id"] for t in tagged] == [task["id"]]
    assert as_json(await taskflow(cli_env, "list", "--tag", "k=w", "--json")) == []
    cancelled = as_json(await taskflow(cli_env, "cancel", task["id"], "--json"))
    assert cancelled["status"] == "cancelled"
    again = await taskflow(cli_env, "cancel", task["id"])
    assert again.returncode == 5
    assert "invalid_state" in again.stderr
    assert (await taskflow(cli_env, "wait", task["id"])).returncode == 1  # cancelled

    queued = as_json(await taskflow(cli_env, "retry", task["id"], "--json"))
    assert queued["status"] == "queued"
    assert (await taskflow(cli_env, "wait", task["id"], "--timeout", "90")).returncode == 0


async def test_dlq_list_and_replay(cli_env: dict[str, str]) -> None:
    task = as_json(await taskflow(cli_env, "submit", "fail", "{}", "--wait", "--json"))
    assert task["status"] == "failed"

    async def listed() -> list[dict[str, Any]]:
        items = as_json(await taskflow(cli_env, "dlq", "list", "--json"))
        return [d for d in items if d["task_id"] == task["id"]]

    letters = await wait_for(listed, 20, what="the dead letter in `taskflow dlq list`")
    assert letters[0]["status"] == "open"
    table = await taskflow(cli_env, "dlq", "list", "--status", "open")
    assert task["id"] in table.stdout

    replayed = as_json(await taskflow(cli_env, "dlq", "replay", task["id"], "--json"))
    assert replayed["status"] == "queued"
    assert (await taskflow(cli_env, "wait", task["id"])).returncode == 1  # fails again


async def test_console_script_and_js_info(stack: Stack, cli_env: dict[str, str]) -> None:
    script = Path(sysconfig.get_path("scripts")) / "taskflow"
    assert script.exists(), "the taskflow console script is not installed (make install)"
    base = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    helped = await asyncio.to_thread(
        subprocess.run,
        [str(script), "--help"],
        env={**base, **cli_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert helped.returncode == 0
    assert "Exit codes" in helped.stdout

    nats = {k: stack.env[k] for k in ("NATS_URL", "NATS_STREAM_NAME", "NATS_CONSUMER_NAME")}
    nats["NATS_SUBJECT_PREFIX"] = stack.env["NATS_SUBJECT_PREFIX"]
    info = await taskflow(nats, "js-info", "--json")
    assert info.returncode == 0, info.stderr
    names = {s["name"] for s in as_json(info)["streams"]}
    assert stack.env["NATS_STREAM_NAME"] in names
    assert "--json" in (await taskflow(nats, "js-info", "--help")).stdout
