"""Every Prometheus metric TaskFlow exports, grouped by the service that exports it.

Each service builds its own :class:`~prometheus_client.CollectorRegistry` with
:func:`new_registry` (process, platform and GC collectors included) and one metrics
object for its role: :class:`ApiMetrics` (ingest API), :class:`WorkerMetrics`,
:class:`DispatcherMetrics`, :class:`DlqMetrics`. The ingest API and the dlq-monitor serve
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
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
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
    "ApiMetrics",
    "DispatcherMetrics",
    "DlqMetrics",
    "HttpMetrics",
    "LabelCap",
    "MetricsServer",
    "WorkerMetrics",
    "exported_names",
    "new_registry",
    "render",
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


class ApiMetrics(HttpMetrics):
    """The ingest API's metrics: HTTP plus ``taskflow_tasks_submitted_total{type,priority}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.types = LabelCap()
        self.submitted = Counter(
            "taskflow_tasks_submitted",
            "Tasks created through the API (idempotent replays not counted).",
            ["type", "priority"],
            registry=registry,
        )
        self._submitted: dict[tuple[str, str], Counter] = {}

    def task_submitted(self, task_type: str, priority: str) -> None:
        """Count one newly created task (label children cached per type and priority)."""
        key = (task_type, priority)
        child = self._submitted.get(key)
        if child is None:
            child = self.submitted.labels(self.types(task_type), priority_label(priority))
            # Only bounded keys are cached: a type folded into "other" (past the cap)
            # or an unknown priority would let clients grow the cache without end.
            if self.types(task_type) == task_type and priority_label(priority) == priority:
                self._submitted[key] = child
        child.inc()


# -- worker ------------------------------------------------------------------------------


class WorkerMetrics:
    """The worker's metrics; see ``docs/observability.md`` for each one's meaning.

    ``busy`` and ``slots`` are read at scrape time from ``busy_fn`` (slots in use) and
    ``slots`` (``WORKER_CONCURRENCY``).
    """

    def __init__(
        self, registry: CollectorRegistry, slots: int, busy_fn: Callable[[], float] | None = None
    ) -> None:
        self.registry = registry
        self.types = LabelCap()
        # Label children by (metric, label values): labels() takes a lock and validates
        # its arguments on every call, several times per task. Bounded: types are capped
        # by LabelCap, priorities and outcomes are fixed sets.
        self._children: dict[tuple[object, ...], Any] = {}
        labels = ["type", "priority"]
        self.started = Counter(
            "taskflow_attempts_started",
            "Attempts claimed and started by this worker (a task retried twice counts 3).",
            labels,
            registry=registry,
        )
        self.completed = Counter(
            "taskflow_tasks_completed",
            "Tasks that ended completed (their successful attempt recorded).",
            labels,
            registry=registry,
        )
        self.failed = Counter(
            "taskflow_tasks_failed",
            "Tasks that failed for good (permanent error or attempts used up); each is "
            "then dead-lettered by the dispatcher.",
            labels,
            registry=registry,
        )
        self.retried = Counter(
            "taskflow_tasks_retried",
            "Failed attempts after which the task was scheduled to run again (backoff).",
            labels,
            registry=registry,
        )
        self.duration = Histogram(
            "taskflow_attempt_duration_seconds",
            "Handler run time per attempt, by type and outcome (succeeded, failed, "
            "interrupted, cancelled, lost) (seconds).",
            ["type", "outcome"],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "taskflow_queue_wait_seconds",
            "Time from a task being due (submitted, or its retry due) to its attempt "
            "being claimed, by priority (seconds, database clock).",
            ["priority"],
            buckets=WAIT_BUCKETS_S,
            registry=registry,
        )
        self.busy = Gauge(
            "taskflow_worker_busy_slots",
            "Slots in use: deliveries being claimed, run or recorded.",
            registry=registry,
        )
        if busy_fn is not None:
            self.busy.set_function(busy_fn)
        self.slots = Gauge(
            "taskflow_worker_slots",
            "Slots of this worker (WORKER_CONCURRENCY).",
            registry=registry,
        )
        self.slots.set(slots)
        self.fetches = Counter(
            "taskflow_worker_fetches",
            "Fetch rounds over the priority consumers (empty ones included): stays flat "
            "when a worker is stuck or all its slots are busy.",
            registry=registry,
        )
        self.fetched = Counter(
            "taskflow_worker_messages_fetched",
            "Task messages fetched, by priority.",
            ["priority"],
            registry=registry,
        )

    def _child(self, metric: Counter | Histogram, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def fetch_round(self, priorities: list[str]) -> None:
        """Count one fetch round that returned messages of ``priorities`` (one per message)."""
        self.fetches.inc()
        for p in priorities:
            self._child(self.fetched, priority_label(p)).inc()

    def attempt_started(self, task_type: str, priority: str, queue_wait_s: float | None) -> None:
        """Count a claimed attempt; observe its queue wait (seconds) when known."""
        self._child(self.started, self.types(task_type), priority_label(priority)).inc()
        if queue_wait_s is not None:
            self._child(self.queue_wait, priority_label(priority)).observe(max(0.0, queue_wait_s))

    def attempt_finished(self, task_type: str, outcome: str, seconds: float) -> None:
        """Observe how long the handler ran (``seconds``) and how it ended."""
        self._child(self.duration, self.types(task_type), outcome).observe(seconds)

    def task_completed(self, task_type: str, priority: str) -> None:
        """Count a task completed by this worker."""
        self._child(self.completed, self.types(task_type), priority_label(priority)).inc()

    def attempt_failed(self, task_type: str, priority: str, task_status: str) -> None:
        """Count a recorded failure: ``retrying`` -> retried, ``failed`` -> failed for good."""
        labels = (self.types(task_type), priority_label(priority))
        if task_status == "retrying":
            self.retried.labels(*labels).inc()
        elif task_status == "failed":
            self.failed.labels(*labels).inc()


# -- dispatcher --------------------------------------------------------------------------


class DispatcherMetrics:
    """The dispatcher's metrics: publishes, dead letters, lag and consumer state."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.types = LabelCap()
        self.published = Counter(
            "taskflow_tasks_published",
            "Task messages published to JetStream and PubAck'd (one per attempt), by priority.",
            ["priority"],
            registry=registry,
        )
        self.publish_errors = Counter(
            "taskflow_publish_errors",
            "Task or dead-letter publishes without a PubAck (retried later).",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "taskflow_tasks_dead_lettered",
            "Dead letters of failed tasks published to the dead-letter stream.",
            ["type", "priority"],
            registry=registry,
        )
        self.lag = Gauge(
            "taskflow_dispatcher_lag_seconds",
            "Age of the oldest task that is due but not yet published (0 when none; "
            "seconds, database clock; sampled).",
            registry=registry,
        )
        self.pending = Gauge(
            "taskflow_consumer_pending",
            "Messages in the stream not yet delivered to the priority's consumer (sampled).",
            ["priority"],
            registry=registry,
        )
        self.ack_pending = Gauge(
            "taskflow_consumer_ack_pending",
            "Messages delivered to workers and not yet acked, by priority (sampled).",
            ["priority"],
            registry=registry,
        )
        self.max_ack_pending = Gauge(
            "taskflow_consumer_max_ack_pending",
            "The consumer's max_ack_pending limit (WORKER_MAX_ACK_PENDING), by priority.",
            ["priority"],
            registry=registry,
        )
        self.redelivered = Gauge(
            "taskflow_consumer_redelivered",
            "Unacked messages that were delivered more than once, by priority (sampled).",
            ["priority"],
            registry=registry,
        )
        self.samples = Counter(
            "taskflow_dispatcher_samples",
            "Sampling rounds of lag and consumer state, by result (ok or error).",
            ["result"],
            registry=registry,
        )

    def published_batch(self, priorities: list[str], errors: int) -> None:
        """Count PubAck'd task publishes (one priority per message) and failed ones."""
        for p in priorities:
            self.published.labels(priority_label(p)).inc()
        if errors:
            self.publish_errors.inc(errors)

    def dead_letter_published(self, task_type: str, priority: str) -> None:
        """Count one dead letter on the bus."""
        self.dead_lettered.labels(self.types(task_type), priority_label(priority)).inc()

    def consumer_state(
        self, priority: str, pending: int, ack_pending: int, max_ack_pending: int, redelivered: int
    ) -> None:
        """Record one consumer's sampled state."""
        p = priority_label(priority)
        self.pending.labels(p).set(pending)
        self.ack_pending.labels(p).set(ack_pending)
        self.max_ack_pending.labels(p).set(max_ack_pending)
        self.redelivered.labels(p).set(redelivered)


# -- dlq-monitor -------------------------------------------------------------------------


class DlqMetrics(HttpMetrics):
    """The dlq-monitor's metrics: HTTP plus dead letters recorded, open, replayed, discarded."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.types = LabelCap()
        self.recorded = Counter(
            "taskflow_dead_letters_recorded",
            "Dead letters newly recorded in Postgres by this process (redeliveries not "
            "counted), by type and priority (``none`` for undecodable ones).",
            ["type", "priority"],
            registry=registry,
        )
        self.open = Gauge(
            "taskflow_dead_letters_open",
            "Dead letters waiting for an operator (status open), by type; read from "
            "Postgres at scrape time.",
            ["type"],
            registry=registry,
        )
        self.replayed = Counter(
            "taskflow_dead_letters_replayed",
            "Tasks replayed from the dead-letter API or console.",
            registry=registry,
        )
        self.discarded = Counter(
            "taskflow_dead_letters_discarded",
            "Dead letters discarded from the dead-letter API or console.",
            registry=registry,
        )
        self._open_types: set[str] = set()

    def dead_letter_recorded(self, task_type: str | None, priority: str | None) -> None:
        """Count one newly recorded dead letter."""
        t = self.types(task_type) if task_type is not None else "none"
        p = priority_label(priority) if priority is not None else "none"
        self.recorded.labels(t, p).inc()

    def open_by_type(self, counts: dict[str | None, int]) -> None:
        """Set the open gauge from ``{type: count}``; types no longer open drop to 0."""
        now: dict[str, int] = {}
        for task_type, n in counts.items():
            label = self.types(task_type) if task_type is not None else "none"
            now[label] = now.get(label, 0) + n
        for gone in self._open_types - now.keys():
            self.open.labels(gone).set(0)
        for label, n in now.items():
            self.open.labels(label).set(n)
        self._open_types |= now.keys()


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


def exported_names() -> dict[str, set[str]]:
    """Series names each service exports, keyed ``ingest-api``/``worker``/``dispatcher``/
    ``dlq-monitor`` (built from fresh registries, so nothing is shared with a service)."""
    roles: dict[str, Callable[[CollectorRegistry], Any]] = {
        "ingest-api": ApiMetrics,
        "worker": lambda r: WorkerMetrics(r, slots=1),
        "dispatcher": DispatcherMetrics,
        "dlq-monitor": DlqMetrics,
    }
    out: dict[str, set[str]] = {}
    for role, make in roles.items():
        registry = new_registry()
        make(registry)
        out[role] = series_names(registry)
    return out
