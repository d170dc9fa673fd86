"""HTTP metrics: :class:`RequestMetrics` (Falcon middleware) counts requests and latency by
route template and status into :class:`~taskflow_common.metrics.HttpMetrics`;
:class:`MetricsResource` serves ``GET /metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import falcon.asgi
from prometheus_client import CollectorRegistry

from taskflow_common import logs
from taskflow_common.metrics import CONTENT_TYPE_LATEST, HttpMetrics, render

log = logs.get_logger(__name__)


class RequestMetrics:
    """Falcon middleware: count each request and its latency by route template and status.

    Feeds :class:`taskflow_common.metrics.HttpMetrics`; the route label is the matched
    template (``/api/v1/dlq/{task_id}``), ``unmatched`` for unknown paths, so ids never
    become label values. Latency runs from Falcon receiving the request to the response
    being ready (seconds).
    """

    def __init__(self, metrics: HttpMetrics) -> None:
        self._metrics = metrics

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Note when the request arrived."""
        req.context.metrics_started = time.perf_counter()

    async def process_response(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        """Count the answered request (errors included: Falcon has set their status)."""
        started = getattr(req.context, "metrics_started", None)
        if started is None:
            return
        status = int(str(resp.status).split(" ", 1)[0]) if resp.status else 200
        self._metrics.observe(req.method, req.uri_template, status, time.perf_counter() - started)


class MetricsResource:
    """``GET /metrics``: the service's registry in the Prometheus text format.

    ``refresh`` (optional) runs first, e.g. to read a gauge from Postgres; if it raises
    the scrape still answers with the values held.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        refresh: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._registry = registry
        self._refresh = refresh

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Render the registry (``text/plain; version=0.0.4``)."""
        if self._refresh is not None:
            try:
                await self._refresh()
            except Exception as exc:  # a scrape must not fail because a gauge could not be read
                log.warning("metrics_refresh_failed", error=f"{exc.__class__.__name__}: {exc}")
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = render(self._registry)
