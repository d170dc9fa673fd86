"""Keep ``make bench`` working: a tiny run must produce every figure (never a speed check).

Runs ``python -m tests.bench`` as a process with 200 tasks, one run, a 1 s paced phase
and a 1 s settle, writing its JSON to a temporary file (``.bench/latest.json`` of a full
run is left alone). Deselect with ``-m "not bench"``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.report import REQUIRED

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.bench, pytest.mark.timeout(150)]


def _env(out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    env.pop("NATS_URL", None)  # always our own NATS, with the monitoring port the bench reads
    env.pop("DATABASE_URL", None)
    external = os.environ.get("TASKFLOW_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if external:
        env["DATABASE_URL"] = external  # the same server the rest of the suite uses
    return env | {
        "BENCH_N": "200",
        "BENCH_RUNS": "1",
        "BENCH_PACED_SECONDS": "1",
        "BENCH_RSS_TASKS": "200",
        "BENCH_SETTLE_S": "1",
        "BENCH_TICK_SECONDS": "3",
        "BENCH_PRUNE_ROWS": "2000",
        "BENCH_OUT": str(out),
    }


def test_bench_produces_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.bench"],
        cwd=REPO,
        env=_env(out),
        capture_output=True,
        text=True,
        timeout=140,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "**TaskFlow**" in result.stdout

    doc = json.loads(out.read_text())
    for key in ("python", "taskflow", "nats_server", "postgres"):
        assert doc["versions"][key], key
    for key in ("cores", "memory_bytes", "cpu_model"):
        assert doc["machine"][key], key
    figures = doc["figures"]
    for key in REQUIRED:
        fig = figures[key]
        assert set(fig) >= {"median", "min", "max"}, key
        if key == "batch_burst_tasks_per_s" and not doc["config"]["batch_endpoint"]:
            assert fig["median"] is None
            continue
        if key == "pg_round_trips_per_task" and shutil.which("ss") is None:
            continue  # counted from the kernel's TCP counters, read with iproute2's ss
        for part in ("median", "min", "max"):
            value = fig[part]
            assert isinstance(value, int | float), (key, part, value)
            assert math.isfinite(value), (key, part, value)
        assert fig["min"] <= fig["median"] <= fig["max"], key
    for key in ("nats_msgs_per_task", "pg_xacts_per_task", "cpu_s_per_1000_worker",
                "scale_2_workers_tasks_per_s", "loadgen_ceiling_req_per_s",
                "intake_single_tasks_per_s", "tick_queued_p99_ms",
                "prune_burst_with_tasks_per_s", "prune_tasks_heap_mib_vacuumed"):  # fmt: skip
        assert isinstance(figures[key]["median"], int | float), key
