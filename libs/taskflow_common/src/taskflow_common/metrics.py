"""Every Prometheus metric TaskFlow exports, grouped by the service that exports it.

Each service builds its own :class:`~prometheus_client.CollectorRegistry` with
:func:`new_registry` (process, platform and GC collectors included) and one metrics
object for its role, defined in that service (``taskflow_ingest_api.metrics``,
``taskflow_worker.metrics``, ``taskflow_dispatcher.metrics``, ``taskflow_dlq_monitor.metrics``)
from the shared parts here: :class:`HttpMetrics`, :class:`LabelCap`, :func:`priority_label`.
The ingest API and the dlq-monitor serve
``GET /metrics`` on their HTTP port (:class:`taskflow_common.http.MetricsResource`); the
worker and the dispatcher on their own port (:func:`serve`, ``WORKER_METRICS_PORT``
default 9101, ``DISPATCHER_METRICS_PORT`` default 9102, 0 = any free port).

Label sets are bounded: ``priority`` is one of high/normal/low (anything else
``other``); ``type`` keeps the first :data:`MAX_TYPES` distinct task types a process
sees and reports any later new one as ``other`` (:class:`LabelCap`); HTTP ``route`` is
the Falcon route template (``/api/v1/tasks/{task_id}``, never an id) or ``unmatched``.

Hot-path cost: a counter increment or histogram observation with cached label children
is about a microsecond; nothing here logs or does I/O per task. Gauges that need a
query (dispatcher lag, consumer state) are sampled by a background loop in their
service, never on the task path. ``_created`` series are disabled (they double the
output and no dashboard uses them). :func:`exported_names` lists every series name a
role exports, for the dashboard and alert-rule checks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from taskflow_common.errors import MetricsPortError as MetricsPortError  # re-exported
from taskflow_common.subjects import PRIORITIES

__all__ = [
    "CONTENT_TYPE_LATEST",
    "HttpMetrics",
    "LabelCap",
    "MetricsServer",
    "exported_names",
    "new_registry",
    "priority_label",
    "render",
    "series_names",
    "serve",
]

disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

MAX_TYPES = 100
"""Distinct ``type`` label values a process reports before folding new ones into ``other``."""
OTHER = "other"

DURATION_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
)  # fmt: skip
"""Attempt duration buckets (seconds): 5 ms to 15 min, the default task timeout is 5 min."""
WAIT_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
"""Queue wait buckets (seconds): 5 ms to 1 h (a backlog under overload)."""
HTTP_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""HTTP latency buckets (seconds): 1 ms to 10 s."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_PRIORITIES = frozenset(PRIORITIES)


class LabelCap:
    """Bound a label's values: the first ``limit`` distinct values pass, later ones are ``other``.

    Keeps a label such as the task ``type`` (chosen by clients) from creating an
    unbounded number of series. Not thread-safe on purpose: each service updates its
    metrics from one event loop.
    """

    def __init__(self, limit: int = MAX_TYPES) -> None:
        self.limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        """Return ``value`` itself while it is one of the first ``limit`` seen, else ``other``."""
        if value is None:
            return OTHER
        if value in self._seen:
            return value
        if len(self._seen) < self.limit:
            self._seen.add(value)
            return value
        return OTHER


def priority_label(value: str | None) -> str:
    """``high``/``normal``/``low`` as given; anything else ``other``."""
    return value if value is not None and value in _PRIORITIES else OTHER


def new_registry() -> CollectorRegistry:
    """A registry for one service, with the process, platform and GC collectors."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format (``CONTENT_TYPE_LATEST``)."""
    return generate_latest(registry)


# -- HTTP (ingest API, dlq-monitor) ------------------------------------------------------


class HttpMetrics:
    """``taskflow_http_requests_total`` and ``taskflow_http_request_duration_seconds``.

    Labels: ``method`` (known HTTP methods, else ``other``), ``route`` (the route
    template, or ``unmatched``), ``status`` (the numeric code, requests only).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "taskflow_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "taskflow_http_request_duration_seconds",
            "Time from routing to the response being ready, by method and route (seconds).",
            ["method", "route"],
            buckets=HTTP_BUCKETS_S,
            registry=registry,
        )
        self._children: dict[tuple[str, str | None, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str | None, status: int, seconds: float) -> None:
        """Count one answered request that took ``seconds``.

        The label children are looked up once per (method, route, status) and cached:
        ``labels()`` validates and joins its values on every call. Bounded like the
        series themselves (known methods, route templates, status codes).
        """
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            label = method if method in _METHODS else OTHER
            where = route or "unmatched"
            children = (
                self.requests.labels(label, where, str(status)),
                self.latency.labels(label, where),
            )
            if label != OTHER:  # unknown methods are unbounded input: never cache them
                self._children[key] = children
        count, latency = children
        count.inc()
        latency.observe(seconds)


# -- serving (worker, dispatcher) ---------------------------------------------------------


class MetricsServer:
    """A running ``/metrics`` HTTP server on its own thread (see :func:`serve`)."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        return int(self._httpd.server_port)

    def close(self) -> None:
        """Stop serving and release the port (waits up to 2 s for the thread)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2)


@contextlib.contextmanager
def serve(
    registry: CollectorRegistry, host: str, port: int, setting: str
) -> Iterator[MetricsServer]:
    """Serve ``registry`` on ``http://host:port/metrics`` (port 0: a free one) until exit.

    prometheus-client's own threaded WSGI server: a scrape never waits for the event
    loop, and reads values the loop writes under the library's locks. ``setting`` names
    the variable for the error message. Raises :class:`MetricsPortError` when the port
    cannot be bound.
    """
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsPortError(
            f"cannot serve metrics on {host}:{port} ({setting}): {exc}; set {setting} to a "
            "free port, or 0 to pick one"
        ) from exc
    server = MetricsServer(httpd, thread)
    try:
        yield server
    finally:
        server.close()


# -- names (dashboard and alert checks) ---------------------------------------------------

_SUFFIXES: dict[str, tuple[str, ...]] = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum", ""),
    "gauge": ("",),
    "info": ("_info",),
}


def series_names(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry`` can expose (``_total``, ``_bucket``... included)."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


MetricsFactory = Callable[[CollectorRegistry], Any]
"""Builds a service's metrics object on a registry (e.g. a metrics class)."""


def exported_names(services: Mapping[str, MetricsFactory] | None = None) -> dict[str, set[str]]:
    """Series names each service exports, keyed by role, built from fresh registries.

    ``services`` maps a role to the factory of its metrics object, e.g. ``{"dispatcher":
    DispatcherMetrics, "worker": lambda r: WorkerMetrics(r, slots=1)}``: every role's
    metrics live in its service and the library never imports a service, so the caller
    passes them in.
    """
    roles: dict[str, MetricsFactory] = {}
    roles.update(services or {})
    out: dict[str, set[str]] = {}
    for role, make in roles.items():
        registry = new_registry()
        make(registry)
        out[role] = series_names(registry)
    return out
