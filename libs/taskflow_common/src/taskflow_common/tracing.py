"""OpenTelemetry set-up and W3C trace context carried in NATS headers and task rows.

:func:`setup` installs a tracer provider once per service. No exporter runs unless
``OTEL_TRACES_EXPORTER`` names one: ``otlp`` (OTLP over HTTP; the exporter reads the
standard ``OTEL_EXPORTER_OTLP_*`` variables), ``console`` (stdout), or ``file`` (one
JSON span per line appended to ``OTEL_TRACES_FILE``; used by the trace tests).
The resource's ``service.name`` is the service unless ``OTEL_SERVICE_NAME`` says
otherwise (the SDK reads it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import IO

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from taskflow_common.config import CommonSettings

_propagator = TraceContextTextMapPropagator()


class JsonLinesSpanExporter(SpanExporter):
    """Append each finished span as one JSON line (the SDK's ``to_json``) to a file."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in shutdown

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for span in spans:
                self._file.write(span.to_json(indent=None) + "\n")
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()


@contextmanager
def setup(service: str, settings: CommonSettings) -> Iterator[trace.Tracer]:
    """Install the tracer provider for ``service``; flush and shut it down on exit.

    Yields the service's tracer. With ``OTEL_TRACES_EXPORTER=none`` (the default) nothing
    is exported, so nothing is recorded either: a new trace starts unsampled
    (``ParentBased(ALWAYS_OFF)``), its spans are non-recording (no attributes, events or
    timing kept: ~8 % of the ingest API's CPU per request when they were recorded), but
    they still carry valid trace and span ids, which reach logs, NATS headers and task
    rows. A caller's sampled ``traceparent`` is still honoured (its spans are recorded).
    """
    resource = Resource.create({SERVICE_NAME: service})
    kind = settings.otel_traces_exporter
    if kind in ("otlp", "console", "file"):
        provider = TracerProvider(resource=resource)
    else:
        provider = TracerProvider(resource=resource, sampler=ParentBased(ALWAYS_OFF))
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif kind == "file":
        provider.add_span_processor(
            SimpleSpanProcessor(JsonLinesSpanExporter(settings.otel_traces_file))
        )
    trace.set_tracer_provider(provider)
    try:
        yield provider.get_tracer(service)
    finally:
        provider.shutdown()


def inject(headers: MutableMapping[str, str], ctx: otel_context.Context | None = None) -> None:
    """Write ``traceparent``/``tracestate`` for ``ctx`` (default: current) into ``headers``."""
    _propagator.inject(headers, context=ctx)


def extract(headers: Mapping[str, str] | None) -> otel_context.Context:
    """Return the context carried by ``headers`` (an empty context when none is)."""
    return _propagator.extract(headers or {})


def current_traceparent() -> str | None:
    """Return the current span's W3C ``traceparent`` string, or None outside a span."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def context_from_traceparent(traceparent: str | None) -> otel_context.Context:
    """Rebuild a parent context from a stored ``traceparent`` (empty when None/invalid)."""
    if not traceparent:
        return otel_context.Context()
    return _propagator.extract({"traceparent": traceparent})


def trace_id_of(traceparent: str | None) -> str | None:
    """Return the 32-hex trace id inside a ``traceparent`` string, or None."""
    if traceparent and traceparent.count("-") == 3:
        return traceparent.split("-")[1]
    return None
