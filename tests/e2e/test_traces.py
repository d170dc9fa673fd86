"""One trace per task across processes, and log lines that lead to it (issue 7, acceptance 2).

The services run as real processes with ``OTEL_TRACES_EXPORTER=file`` (each its own
``OTEL_TRACES_FILE``, one JSON span per line) and ``LOG_LEVEL=DEBUG``. Two tasks:

- ``test.flaky`` failing once, then succeeding: request -> 2 publishes -> 2 attempts;
- ``fail`` (permanent): request -> publish -> attempt -> dead letter -> dlq record.

The design (``docs/observability.md``): the API's request span is the parent of every
publish span, every attempt span and the dead-letter span of its task (the stored
``traceparent`` is the request's); the dlq-monitor's record span is the child of the
dead-letter span, whose context the dead letter's headers carry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskflow_common.logs import TASK_EVENTS
from tests.support.procs import ServiceFactory, ServiceProcess
from tests.support.stack import Stack
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

SERVICES = ("ingest-api", "dispatcher", "worker", "dlq-monitor")


@dataclass
class Span:
    """The parts of an exported span the assertions read (ids as 32/16 hex)."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    start: str
    end: str
    status: str
    attributes: dict[str, Any]

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Span:
        parent = obj.get("parent_id")
        return cls(
            service=obj["resource"]["attributes"]["service.name"],
            name=obj["name"],
            kind=obj["kind"],
            trace_id=obj["context"]["trace_id"].removeprefix("0x"),
            span_id=obj["context"]["span_id"].removeprefix("0x"),
            parent_id=parent.removeprefix("0x") if parent else None,
            start=obj["start_time"],
            end=obj["end_time"],
            status=obj["status"]["status_code"],
            attributes=obj.get("attributes", {}),
        )


@dataclass
class Run:
    """What one scenario left behind: spans from every file, log lines of every process."""

    stack: Stack
    files: dict[str, Path]
    procs: list[ServiceProcess]
    flaky: str
    failing: str

    def spans(self) -> list[Span]:
        out: list[Span] = []
        for path in self.files.values():
            if path.exists():
                for line in path.read_text().splitlines():
                    if line.strip():
                        out.append(Span.from_json(json.loads(line)))
        return out

    def logs(self, task_id: str) -> list[dict[str, Any]]:
        return [e for p in self.procs for e in p.log_events() if e.get("task_id") == task_id]


def of_task(spans: list[Span], task_id: str, name: str) -> list[Span]:
    """The ``name`` spans whose ``taskflow.task_id`` is ``task_id``, by attempt."""
    found = [s for s in spans if s.name == name and s.attributes.get("taskflow.task_id") == task_id]
    return sorted(found, key=lambda s: (s.attributes.get("taskflow.attempt", 0), s.start))


def request_span(spans: list[Span], task_id: str) -> Span:
    """The API request span that created ``task_id`` (parent of its INSERT span)."""
    (insert,) = of_task(spans, task_id, "INSERT tasks")
    (request,) = [s for s in spans if s.span_id == insert.parent_id]
    return request


@pytest.fixture
async def run(service_env: dict[str, str], services: ServiceFactory, tmp_path: Path) -> Run:
    env = service_env | {
        "WORKER_HANDLERS": "taskflow_worker.builtin,taskflow_worker.testing",
        "WORKER_BACKOFF_BASE": "200ms",
        "WORKER_BACKOFF_MAX": "1s",
        "WORKER_MAX_ATTEMPTS": "3",
        "OTEL_TRACES_EXPORTER": "file",
        "LOG_LEVEL": "DEBUG",
    }
    files = {name: tmp_path / f"spans-{name}.jsonl" for name in SERVICES}
    files["worker-1"] = tmp_path / "spans-worker-1.jsonl"
    stack = Stack(services, env)
    stack.api = await services.start(
        "ingest-api", env | {"OTEL_TRACES_FILE": str(files["ingest-api"])}
    )
    stack.dispatcher = await services.start(
        "dispatcher", env | {"OTEL_TRACES_FILE": str(files["dispatcher"])}
    )
    stack.dlq = await services.start(
        "dlq-monitor", env | {"OTEL_TRACES_FILE": str(files["dlq-monitor"])}
    )
    # Two workers: the two attempts of a task may run in different processes.
    await stack.start_worker({"OTEL_TRACES_FILE": str(files["worker"])})
    await stack.start_worker({"OTEL_TRACES_FILE": str(files["worker-1"])})

    flaky = (await stack.submit("test.flaky", {"fail_times": 1}))["id"]
    failing = (await stack.submit("fail", {"reason": "not today"}))["id"]
    assert (await stack.wait_status(flaky))["status"] == "completed"
    assert (await stack.wait_status(failing))["status"] == "failed"
    result = Run(stack, files, list(services.started), flaky, failing)

    def all_exported() -> bool:
        spans = result.spans()
        return (
            len(of_task(spans, flaky, "task attempt")) == 2
            and len(of_task(spans, failing, "dlq.record")) == 1
        )

    # Spans are written when they end (SimpleSpanProcessor); the record span ends after
    # the dlq-monitor's commit.
    await wait_for(all_exported, timeout=30, what="every span exported")
    await stack.close()
    return result


async def test_one_trace_links_every_process_including_the_retry(run: Run) -> None:
    spans = run.spans()

    # The task that failed once, then succeeded.
    request = request_span(spans, run.flaky)
    assert request.service == "ingest-api"
    assert request.kind == "SpanKind.SERVER"
    assert request.name == "POST /api/v1/tasks"
    trace_id = request.trace_id
    publishes = of_task(spans, run.flaky, "task publish")
    attempts = of_task(spans, run.flaky, "task attempt")
    assert [p.attributes["taskflow.attempt"] for p in publishes] == [1, 2]
    assert [a.attributes["taskflow.attempt"] for a in attempts] == [1, 2]
    for span in (*publishes, *attempts):
        assert span.trace_id == trace_id
        assert span.parent_id == request.span_id
    assert {p.service for p in publishes} == {"dispatcher"}
    assert {a.service for a in attempts} == {"worker"}
    first, second = attempts
    assert first.attributes["taskflow.outcome"] == "failed"
    assert first.status == "ERROR"
    assert second.attributes["taskflow.outcome"] == "succeeded"
    assert first.attributes["taskflow.type"] == "test.flaky"
    # The retry is published after the first attempt ended and runs after that.
    assert first.end <= publishes[1].start <= second.start
    assert of_task(spans, run.flaky, "task dead-letter") == []

    # The task that was dead-lettered: all four processes in one trace.
    request = request_span(spans, run.failing)
    trace_id = request.trace_id
    (publish,) = of_task(spans, run.failing, "task publish")
    (attempt,) = of_task(spans, run.failing, "task attempt")
    (dead,) = of_task(spans, run.failing, "task dead-letter")
    (record,) = of_task(spans, run.failing, "dlq.record")
    for span in (publish, attempt, dead):
        assert span.trace_id == trace_id
        assert span.parent_id == request.span_id
    assert attempt.attributes["taskflow.outcome"] == "failed"
    assert dead.service == "dispatcher"
    assert dead.kind == "SpanKind.PRODUCER"
    assert dead.attributes["taskflow.type"] == "fail"
    assert record.service == "dlq-monitor"
    assert record.kind == "SpanKind.CONSUMER"
    assert record.trace_id == trace_id
    assert record.parent_id == dead.span_id
    assert record.attributes["taskflow.dead_letter.new"] is True
    services = {s.service for s in spans if s.trace_id == trace_id}
    assert services == set(SERVICES)
    # Two tasks, two traces.
    assert request_span(spans, run.flaky).trace_id != trace_id


async def test_every_log_line_of_a_task_carries_its_trace(run: Run) -> None:
    spans = run.spans()
    for task_id in (run.flaky, run.failing):
        trace_id = request_span(spans, task_id).trace_id
        lines = run.logs(task_id)
        assert lines, task_id
        for line in lines:
            assert line["event"] in TASK_EVENTS, line
            assert line["trace_id"] == trace_id, line
            assert len(line["span_id"]) == 16, line
            if line["event"] != "task_submitted":
                assert isinstance(line["attempt"], int), line

    flaky = [(e["service"], e["event"], e.get("attempt")) for e in run.logs(run.flaky)]
    for expected in [
        ("ingest-api", "task_submitted", None),
        ("dispatcher", "task_published", 1),
        ("worker", "attempt_started", 1),
        ("worker", "attempt_failed", 1),
        ("dispatcher", "task_published", 2),
        ("worker", "attempt_started", 2),
        ("worker", "attempt_succeeded", 2),
    ]:
        assert flaky.count(expected) == 1, (expected, flaky)

    failing = [(e["service"], e["event"], e.get("attempt")) for e in run.logs(run.failing)]
    for expected in [
        ("ingest-api", "task_submitted", None),
        ("dispatcher", "task_published", 1),
        ("worker", "attempt_started", 1),
        ("worker", "attempt_failed", 1),
        ("dispatcher", "task_dead_lettered", 1),
        ("dlq-monitor", "task_dead_lettered", 1),
    ]:
        assert failing.count(expected) == 1, (expected, failing)

    # A line's span id is the span it was written in: it leads to that span.
    by_id = {s.span_id: s for s in spans}
    for line in run.logs(run.flaky) + run.logs(run.failing):
        span = by_id[line["span_id"]]
        assert span.service == line["service"], line
        expected_name = {
            "task_submitted": "POST /api/v1/tasks",
            "task_published": "task publish",
            "attempt_started": "task attempt",
            "attempt_failed": "task attempt",
            "attempt_succeeded": "task attempt",
        }.get(line["event"])
        if expected_name is not None:
            assert span.name == expected_name, line
        if line["event"] == "task_dead_lettered":
            assert (
                span.name
                == {"dispatcher": "task dead-letter", "dlq-monitor": "dlq.record"}[line["service"]]
            )
