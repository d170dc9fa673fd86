"""Pure logic of the metrics module and the log vocabulary (no servers needed)."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from taskflow_common import metrics
from taskflow_common.logs import TASK_EVENTS
from taskflow_dlq_monitor.metrics import DlqMetrics
from taskflow_ingest_api.metrics import ApiMetrics
from taskflow_worker.metrics import WorkerMetrics
from tests.support.scrape import parse

REPO = Path(__file__).resolve().parents[2]


def test_label_cap_keeps_the_first_values_and_folds_later_ones_into_other() -> None:
    cap = metrics.LabelCap(limit=3)
    assert [cap(v) for v in ("a", "b", "a", "c", "d", "b", None)] == [
        "a",
        "b",
        "a",
        "c",
        "other",
        "b",
        "other",
    ]


def test_type_label_is_bounded_per_process() -> None:
    registry = metrics.new_registry()
    api = ApiMetrics(registry)
    for i in range(metrics.MAX_TYPES + 50):
        api.task_submitted(f"type-{i}", "normal")
    api.task_submitted("type-0", "urgent")
    scrape = parse(generate_latest(registry).decode())
    types = scrape.label_values("taskflow_tasks_submitted_total", "type")
    assert len(types) == metrics.MAX_TYPES + 1
    assert scrape.value("taskflow_tasks_submitted_total", type="other") == 50
    assert scrape.value("taskflow_tasks_submitted_total", priority="other") == 1
    assert scrape.value("taskflow_tasks_submitted_total") == metrics.MAX_TYPES + 51


def test_http_labels_are_templates_and_known_methods() -> None:
    registry = metrics.new_registry()
    http = metrics.HttpMetrics(registry)
    http.observe("GET", "/api/v1/tasks/{task_id}", 200, 0.004)
    http.observe("BREW", None, 405, 0.001)
    scrape = parse(generate_latest(registry).decode())
    assert scrape.value("taskflow_http_requests_total", route="/api/v1/tasks/{task_id}") == 1
    assert scrape.value("taskflow_http_requests_total", method="other", route="unmatched") == 1
    assert scrape.value("taskflow_http_request_duration_seconds_bucket", le="0.005") == 2


def test_worker_failures_split_into_retried_and_failed_for_good() -> None:
    registry = metrics.new_registry()
    busy = [3]
    worker = WorkerMetrics(registry, slots=8, busy_fn=lambda: busy[0])
    worker.attempt_failed("t", "high", "retrying")
    worker.attempt_failed("t", "high", "failed")
    worker.attempt_failed("t", "high", "retrying")
    worker.attempt_started("t", "high", queue_wait_s=-0.001)  # clocks: never negative
    scrape = parse(generate_latest(registry).decode())
    assert scrape.value("taskflow_tasks_retried_total", type="t") == 2
    assert scrape.value("taskflow_tasks_failed_total", type="t") == 1
    assert scrape.value("taskflow_queue_wait_seconds_bucket", le="0.005") == 1
    assert scrape.value("taskflow_worker_busy_slots") == 3
    assert scrape.value("taskflow_worker_slots") == 8


def test_open_dead_letters_gauge_drops_types_that_are_gone() -> None:
    registry = metrics.new_registry()
    dlq = DlqMetrics(registry)
    dlq.open_by_type({"a": 2, None: 1})
    dlq.open_by_type({"b": 4})
    scrape = parse(generate_latest(registry).decode())
    assert scrape.value("taskflow_dead_letters_open", type="a") == 0
    assert scrape.value("taskflow_dead_letters_open", type="none") == 0
    assert scrape.value("taskflow_dead_letters_open", type="b") == 4


def test_every_vocabulary_event_is_logged_somewhere() -> None:
    """The documented vocabulary holds no stale names, and the docs list every one."""
    source = "\n".join(
        p.read_text()
        for folder in ("libs", "services")
        for p in (REPO / folder).rglob("*.py")
        if "taskflow_common/logs.py" not in p.as_posix()
    )
    docs = (REPO / "docs" / "observability.md").read_text()
    for event in TASK_EVENTS:
        assert re.search(rf'\.(debug|info|warning|error)\(\s*"{event}"', source), event
        assert f"`{event}`" in docs, event
