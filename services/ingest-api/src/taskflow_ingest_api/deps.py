"""What the resources share: the pool, the NATS connection, the task-event fan-out."""

from __future__ import annotations

from opentelemetry import trace

from taskflow_common.bus import Bus
from taskflow_common.db import Database
from taskflow_common.errors import UnavailableError
from taskflow_common.metrics import new_registry
from taskflow_ingest_api.metrics import ApiMetrics
from taskflow_ingest_api.waiters import TaskEvents


class Deps:
    """Collaborators of the resources; the lifespan middleware opens and closes them.

    Tests may set ``db``/``bus`` before start-up; the app then uses (and leaves open)
    those instead of opening its own. ``events`` (the LISTEN fan-out for waiting
    requests) is created and run by the lifespan.
    """

    def __init__(
        self,
        tracer: trace.Tracer | None = None,
        db: Database | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.tracer = tracer or trace.get_tracer("taskflow_ingest_api")
        self.db = db
        self.bus = bus
        self.events: TaskEvents | None = None
        # One registry per app (tests build several apps in one process).
        self.metrics = ApiMetrics(new_registry())

    def database(self) -> Database:
        """Return the open pool; raise :class:`UnavailableError` before start-up."""
        if self.db is None:
            raise UnavailableError("database pool not open")
        return self.db

    def task_events(self) -> TaskEvents:
        """Return the running :class:`TaskEvents`; raise :class:`UnavailableError` before."""
        if self.events is None:
            raise UnavailableError("task events not started")
        return self.events
