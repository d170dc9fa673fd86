"""Series names each service exports, from each service's own metrics class.

The shared library declares only what it shares (:class:`taskflow_common.metrics.HttpMetrics`
and the helpers); a service's metrics live in that service, and a library never imports a
service. So the catalogue of every service's series, which the dashboard and alert-rule
checks need, is assembled here, in the tests, which may import them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from taskflow_common.metrics import DispatcherMetrics, WorkerMetrics, new_registry, series_names
from taskflow_dlq_monitor.metrics import DlqMetrics
from taskflow_ingest_api.metrics import ApiMetrics

ROLES: dict[str, Callable[[CollectorRegistry], Any]] = {
    "ingest-api": ApiMetrics,
    "worker": lambda r: WorkerMetrics(r, slots=1),
    "dispatcher": DispatcherMetrics,
    "dlq-monitor": DlqMetrics,
}
"""Each service's metrics object, built on a registry (``ingest-api``, ``worker``, ...)."""


def exported_names() -> dict[str, set[str]]:
    """Series names each service exports, keyed by service (built from fresh registries,
    so nothing is shared with a running service)."""
    out: dict[str, set[str]] = {}
    for role, make in ROLES.items():
        registry = new_registry()
        make(registry)
        out[role] = series_names(registry)
    return out
