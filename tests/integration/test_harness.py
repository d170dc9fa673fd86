"""The test harness itself: wait_for, ServiceProcess and the services fixture."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.support.procs import ServiceFactory, ServiceProcess
from tests.support.waiting import wait_for

# A stand-in service: logs JSON to stderr like the real ones, stops on SIGTERM.
FAKE_SERVICE = r"""
import json, os, signal, sys, threading
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
def log(event, **kw):
    print(json.dumps({"event": event, **kw}), file=sys.stderr, flush=True)
print("plain text line", flush=True)
if os.environ.get("FAKE_FAIL"):
    log("start_failed", error="boom")
    sys.exit(3)
log("service_ready", service="fake", nats=os.environ.get("NATS_URL"))
if os.environ.get("FAKE_ERROR"):
    print(json.dumps({"level": "error", "event": os.environ["FAKE_ERROR"]}), file=sys.stderr)
if os.environ.get("FAKE_CRASH"):
    sys.exit(int(os.environ["FAKE_CRASH"]))
stop.wait()
log("service_stopped")
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
"""


def _argv() -> list[str]:
    return [sys.executable, "-c", FAKE_SERVICE]


async def test_wait_for_returns_the_truthy_value() -> None:
    calls = iter([None, 0, "done"])
    assert await wait_for(lambda: next(calls), 1.0, interval=0.01) == "done"


async def test_wait_for_accepts_async_predicates_and_ignored_errors() -> None:
    attempts = 0

    async def flaky() -> bool:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("not yet")
        return True

    assert await wait_for(flaky, 1.0, interval=0.01, ignore=(ConnectionError,))


async def test_wait_for_times_out_with_a_description() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.1 s waiting for the moon"):
        await wait_for(lambda: False, 0.1, interval=0.02, what="the moon")


async def test_service_process_ready_events_and_graceful_stop(tmp_path: Path) -> None:
    proc = ServiceProcess("fake", {"NATS_URL": "nats://x:1"}, tmp_path / "fake.log", argv=_argv())
    proc.start()
    try:
        ready = await proc.wait_ready(10)
        assert ready["nats"] == "nats://x:1"
        assert proc.running
        proc.terminate()
        assert await proc.wait(10) == 0
        assert [e["event"] for e in proc.log_events()] == ["service_ready", "service_stopped"]
        assert "plain text line" in proc.logs()
    finally:
        proc.cleanup()


async def test_service_process_scrubs_inherited_taskflow_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_URL", "nats://from-the-shell:4222")
    proc = ServiceProcess("fake", {}, tmp_path / "fake.log", argv=_argv()).start()
    try:
        assert (await proc.wait_ready(10))["nats"] is None
    finally:
        proc.cleanup()


async def test_wait_ready_reports_an_early_exit_with_the_log(tmp_path: Path) -> None:
    proc = ServiceProcess("fake", {"FAKE_FAIL": "1"}, tmp_path / "f.log", argv=_argv()).start()
    with pytest.raises(AssertionError, match="exited with 3") as info:
        await proc.wait_ready(10)
    assert "start_failed" in str(info.value)


async def test_kill_and_pause(tmp_path: Path) -> None:
    proc = ServiceProcess("fake", {}, tmp_path / "fake.log", argv=_argv()).start()
    try:
        await proc.wait_ready(10)
        proc.pause()
        proc.resume()
        proc.kill()
        assert await proc.wait(10) == -signal.SIGKILL
    finally:
        proc.cleanup()


async def test_services_fixture_stops_what_it_started(services: ServiceFactory) -> None:
    first = await services.start("fake", {}, argv=_argv())
    second = await services.start("fake", {}, argv=_argv())
    assert first.log_path != second.log_path
    await services.stop_all()
    assert first.returncode == 0
    assert second.returncode == 0
    assert "service_stopped" in services.report()


async def _ended(tmp_path: Path, env: dict[str, str], **allow: str) -> str | None:
    """Start the fake with ``env``, stop it, and return what the teardown check says."""
    factory = ServiceFactory(tmp_path)
    proc = await factory.start("fake", env, argv=_argv())
    if allow:
        factory.allow(allow["pattern"], allow["reason"])
    if "FAKE_CRASH" in env:
        await wait_for(lambda: not proc.running, 10, what="the crash")
    await factory.stop_all()
    try:
        factory.verify()
    except AssertionError as exc:
        return str(exc)
    return None


async def test_a_clean_stop_passes_the_teardown_check(tmp_path: Path) -> None:
    assert await _ended(tmp_path, {}) is None


async def test_a_service_that_dies_during_the_test_fails_it(tmp_path: Path) -> None:
    found = await _ended(tmp_path, {"FAKE_CRASH": "1"})
    assert found is not None
    assert "fake" in found
    assert "exited with 1 by itself during the test" in found


async def test_a_non_zero_exit_on_sigterm_fails_the_test(tmp_path: Path) -> None:
    found = await _ended(tmp_path, {"FAKE_EXIT": "2"})
    assert found is not None
    assert "exited with 2 after SIGTERM" in found


async def test_an_error_line_fails_the_test_unless_declared(tmp_path: Path) -> None:
    found = await _ended(tmp_path / "a", {"FAKE_ERROR": "db_lost"})
    assert found is not None
    assert '"event": "db_lost"' in found
    declared = await _ended(
        tmp_path / "b", {"FAKE_ERROR": "db_lost"}, pattern="db_lost", reason="the test drops the db"
    )
    assert declared is None


async def test_a_process_the_test_kills_or_waits_for_is_not_judged_by_its_code(
    tmp_path: Path,
) -> None:
    factory = ServiceFactory(tmp_path)
    killed = await factory.start("fake", {}, argv=_argv())
    waited = await factory.start("fake", {"FAKE_EXIT": "4"}, argv=_argv())
    killed.kill()
    waited.terminate()
    assert await waited.wait(10) == 4  # the test asserts on the code itself
    await factory.stop_all()
    factory.verify()
