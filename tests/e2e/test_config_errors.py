"""A bad configuration stops a service at start with exit code 2, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

# Point at closed ports: a service that got past its configuration would fail differently.
_BASE = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
    "NATS_URL": "nats://127.0.0.1:1",
}


def _run(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**clean, **_BASE, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "variable", "value", "form"),
    [
        ("taskflow_worker", "WORKER_CONCURRENCY", "abc", "whole number"),
        ("taskflow_worker", "WORKER_ACK_WAIT", "5 parsecs", "500ms, 2s, 1m"),
        ("taskflow_worker", "WORKER_HANDLERS", "no.such.module", "cannot import"),
        ("taskflow_dispatcher", "DISPATCHER_BATCH_SIZE", "many", "whole number"),
        ("taskflow_dlq_monitor", "DLQ_HTTP_PORT", "http", "whole number"),
        ("taskflow_ingest_api", "LOG_LEVEL", "LOUD", "DEBUG"),
    ],
)
def test_bad_variable_exits_2_naming_it(module: str, variable: str, value: str, form: str) -> None:
    result = _run(module, {variable: value})
    assert result.returncode == 2, result.stderr[-2000:]
    assert variable in result.stderr
    assert form in result.stderr


def test_every_bad_variable_is_reported_at_once() -> None:
    result = _run("taskflow_worker", {"WORKER_CONCURRENCY": "abc", "WORKER_POLL_TIMEOUT": "soon"})
    assert result.returncode == 2
    assert "WORKER_CONCURRENCY" in result.stderr
    assert "WORKER_POLL_TIMEOUT" in result.stderr
