"""Tracing through the ingest API: the request span continues the caller's trace."""

from __future__ import annotations

import uuid

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskflow_ingest_api.resources import Deps
from tests.support.api import (
    TASKS,
    conductor,
    fetch_row,
    settings_from,
)

# -- tracing --------------------------------------------------------------------------------------


async def test_request_span_continues_the_callers_trace_and_parents_the_task(
    api_env: dict[str, str], database_url: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    caller = "00f067aa0ba902b7"
    deps = Deps(tracer=provider.get_tracer("test"))
    async with conductor(settings_from(api_env), deps) as client:
        result = await client.simulate_post(
            TASKS, json={"type": "demo"}, headers={"traceparent": f"00-{trace_id}-{caller}-01"}
        )
    assert result.status_code == 201
    spans = {s.name: s for s in exporter.get_finished_spans()}
    request = spans["POST /api/v1/tasks"]
    insert = spans["INSERT tasks"]
    assert f"{request.context.trace_id:032x}" == trace_id
    assert request.parent is not None
    assert f"{request.parent.span_id:016x}" == caller
    assert insert.parent is not None
    assert insert.parent.span_id == request.context.span_id
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 201
    row = await fetch_row(
        database_url,
        "SELECT trace_parent FROM tasks WHERE id = $1",
        uuid.UUID(result.json["task"]["id"]),
    )
    assert row is not None
    assert row["trace_parent"] == f"00-{trace_id}-{request.context.span_id:016x}-01"
    provider.shutdown()
