"""Metrics end to end (issue 7, acceptance 1): after known work, every service's
``/metrics`` shows exactly the counts a user expects.

100 tasks: 90 ``demo`` (30 high, 30 normal, 30 low) that succeed and 10 ``fail`` (normal)
that fail permanently on their first attempt and are dead-lettered. Two workers, so
worker counts are summed over processes as a ``sum()`` in Prometheus would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from taskflow_common import metrics
from taskflow_devstack.servers import free_port
from taskflow_dispatcher.metrics import DispatcherMetrics
from taskflow_dlq_monitor.metrics import DlqMetrics
from taskflow_ingest_api.metrics import ApiMetrics
from taskflow_worker.metrics import WorkerMetrics
from tests.support.procs import ServiceFactory
from tests.support.scrape import Scrape, families_of, scrape, total
from tests.support.stack import Stack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

DEMO = {"high": 30, "normal": 30, "low": 30}
FAILS = 10
CONCURRENCY = 4


@pytest.fixture
def env(service_env: dict[str, str]) -> dict[str, str]:
    return service_env | {
        "WORKER_CONCURRENCY": str(CONCURRENCY),
        "DISPATCHER_METRICS_PORT": str(free_port()),
        "DISPATCHER_METRICS_INTERVAL": "200ms",
    }


@pytest.fixture
async def stack(env: dict[str, str], services: ServiceFactory) -> AsyncIterator[Stack]:
    s = await Stack(services, env).start(workers=0)
    for _ in range(2):
        await s.start_worker({"WORKER_METRICS_PORT": str(free_port())})
    try:
        yield s
    finally:
        await s.close()


def urls(stack: Stack) -> dict[str, list[str]]:
    """Each service's /metrics URL(s): the ports the test chose."""
    return {
        "ingest-api": [f"http://127.0.0.1:{stack.env['HTTP_PORT']}/metrics"],
        "dlq-monitor": [f"http://127.0.0.1:{stack.env['DLQ_HTTP_PORT']}/metrics"],
        "dispatcher": [f"http://127.0.0.1:{stack.env['DISPATCHER_METRICS_PORT']}/metrics"],
        "worker": [
            f"http://127.0.0.1:{w.env['WORKER_METRICS_PORT']}/metrics" for w in stack.workers
        ],
    }


async def scrape_all(client: httpx.AsyncClient, stack: Stack) -> dict[str, list[Scrape]]:
    """Scrape every process of every service once."""
    out: dict[str, list[Scrape]] = {}
    for role, role_urls in urls(stack).items():
        out[role] = [await scrape(client, u) for u in role_urls]
    return out


async def test_counts_match_after_100_tasks(stack: Stack) -> None:
    ids: list[str] = []
    for priority, n in DEMO.items():
        for i in range(n):
            ids.append((await stack.submit("demo", {"i": i}, priority=priority))["id"])
    for i in range(FAILS):
        ids.append((await stack.submit("fail", {"reason": f"boom {i}"}))["id"])
    done = await stack.wait_all(ids, timeout=90)
    assert sum(t["status"] == "completed" for t in done) == 90
    assert sum(t["status"] == "failed" for t in done) == FAILS

    async def recorded() -> bool:
        return len(await stack.dead_letters(type="fail")) == FAILS

    await wait_for(recorded, timeout=30, what="10 dead letters recorded")

    async with httpx.AsyncClient(timeout=10) as client:
        # Counters move right after each commit and the gauges every 200 ms: poll until
        # the last of them has caught up, then check every value exactly.
        async def settled() -> dict[str, list[Scrape]] | None:
            got = await scrape_all(client, stack)
            ready = (
                total(got["worker"], "taskflow_tasks_completed_total") == 90
                and total(got["worker"], "taskflow_tasks_failed_total") == FAILS
                and total(got["dispatcher"], "taskflow_tasks_dead_lettered_total") == FAILS
                and total(got["dlq-monitor"], "taskflow_dead_letters_recorded_total") == FAILS
                and total(got["dispatcher"], "taskflow_consumer_ack_pending") == 0
                and total(got["worker"], "taskflow_worker_busy_slots") == 0
            )
            return got if ready else None

        got = await wait_for(settled, timeout=30, interval=0.2, what="metrics to settle")
        # The dlq-monitor's HTTP counters include the scrapes; read its API counts after
        # listing once more so the expected value is known.
        await stack.dead_letters(type="fail")
        dlq_after = await scrape(client, urls(stack)["dlq-monitor"][0])

    api, dispatcher, dlq = got["ingest-api"][0], got["dispatcher"][0], got["dlq-monitor"][0]
    workers = got["worker"]

    # ingest API: what was submitted, and one POST per task answered 201.
    for priority, n in DEMO.items():
        assert api.value("taskflow_tasks_submitted_total", type="demo", priority=priority) == n
    assert api.value("taskflow_tasks_submitted_total", type="fail", priority="normal") == FAILS
    assert api.value("taskflow_tasks_submitted_total") == 100
    assert (
        api.value(
            "taskflow_http_requests_total", method="POST", route="/api/v1/tasks", status="201"
        )
        == 100
    )
    assert api.value(
        "taskflow_http_request_duration_seconds_count", method="POST", route="/api/v1/tasks"
    ) == api.value("taskflow_http_requests_total", method="POST", route="/api/v1/tasks")
    # Routes are templates, never ids.
    assert "/api/v1/tasks/{task_id}" in api.label_values("taskflow_http_requests_total", "route")
    assert not any(
        i in r for r in api.label_values("taskflow_http_requests_total", "route") for i in ids
    )

    # workers: 100 attempts, 90 completed, 10 failed for good, none retried.
    for priority, n in DEMO.items():
        assert (
            total(workers, "taskflow_attempts_started_total", type="demo", priority=priority) == n
        )
    assert total(workers, "taskflow_attempts_started_total", type="fail") == FAILS
    assert total(workers, "taskflow_tasks_completed_total", type="demo") == 90
    assert total(workers, "taskflow_tasks_completed_total", type="fail") == 0
    assert total(workers, "taskflow_tasks_failed_total", type="fail", priority="normal") == FAILS
    assert total(workers, "taskflow_tasks_retried_total") == 0
    assert (
        total(workers, "taskflow_attempt_duration_seconds_count", type="demo", outcome="succeeded")
        == 90
    )
    assert (
        total(workers, "taskflow_attempt_duration_seconds_count", type="fail", outcome="failed")
        == FAILS
    )
    assert total(workers, "taskflow_queue_wait_seconds_count") == 100
    for priority, n in DEMO.items():
        expected = n + (FAILS if priority == "normal" else 0)
        assert total(workers, "taskflow_queue_wait_seconds_count", priority=priority) == expected
    # Every wait fits under the largest finite bucket (1 h): the +Inf bucket equals count.
    assert total(workers, "taskflow_queue_wait_seconds_bucket", le="3600.0") == 100
    assert total(workers, "taskflow_worker_slots") == 2 * CONCURRENCY
    assert all(w.value("taskflow_worker_fetches_total") > 0 for w in workers)
    assert total(workers, "taskflow_worker_messages_fetched_total") >= 100

    # dispatcher: one publish per attempt, one dead letter per failed task, nothing left.
    for priority, n in DEMO.items():
        expected = n + (FAILS if priority == "normal" else 0)
        assert dispatcher.value("taskflow_tasks_published_total", priority=priority) == expected
    assert (
        dispatcher.value("taskflow_tasks_dead_lettered_total", type="fail", priority="normal")
        == FAILS
    )
    assert dispatcher.value("taskflow_tasks_dead_lettered_total") == FAILS
    assert dispatcher.value("taskflow_dispatcher_lag_seconds") == 0
    for priority in DEMO:
        assert dispatcher.value("taskflow_consumer_pending", priority=priority) == 0
        assert dispatcher.value("taskflow_consumer_ack_pending", priority=priority) == 0
        assert dispatcher.value("taskflow_consumer_max_ack_pending", priority=priority) == 1000
    assert dispatcher.value("taskflow_dispatcher_samples_total", result="ok") > 0

    # dlq-monitor: 10 recorded, 10 open, by type.
    assert dlq.value("taskflow_dead_letters_recorded_total", type="fail", priority="normal") == 10
    assert dlq.value("taskflow_dead_letters_recorded_total") == FAILS
    assert dlq.value("taskflow_dead_letters_open", type="fail") == FAILS
    assert (
        dlq_after.value(
            "taskflow_http_requests_total", method="GET", route="/api/v1/dlq", status="200"
        )
        >= 2
    )


async def test_every_service_exports_its_declared_metrics(stack: Stack) -> None:
    """What a scrape shows is what each service's metrics class declares, family by family
    (so the dashboard and rules check against the real names)."""
    declared = {
        "ingest-api": ApiMetrics,
        "dispatcher": DispatcherMetrics,
        "dlq-monitor": DlqMetrics,
    }
    async with httpx.AsyncClient(timeout=10) as client:
        got = await scrape_all(client, stack)
    for role, make in declared.items():
        registry = metrics.new_registry()
        make(registry)
        assert families_of(registry) <= got[role][0].families, role
    registry = metrics.new_registry()
    WorkerMetrics(registry, slots=1)
    for worker in got["worker"]:
        assert families_of(registry) <= worker.families


@pytest.mark.service_errors(
    r'"event":"service_failed".*MetricsPortError',
    "the test holds WORKER_METRICS_PORT: the worker's start fails on purpose",
    service="worker",
)
async def test_metrics_port_in_use_is_a_clear_start_failure(
    env: dict[str, str], services: ServiceFactory
) -> None:
    """A worker whose WORKER_METRICS_PORT is taken exits 1 naming the variable."""
    port = free_port()
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    try:
        proc = await services.start("worker", env | {"WORKER_METRICS_PORT": str(port)}, ready=False)
        assert await proc.wait(timeout=30) == 1
        assert "WORKER_METRICS_PORT" in proc.logs()
    finally:
        server.close()
        await server.wait_closed()
