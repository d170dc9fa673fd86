"""The console's read-only schedule list: ``GET /api/v1/console/schedules``.

-> 200 ``{"items": [Schedule], "more": bool}``: the first :data:`MAX_SHOWN` schedules by
name, as :func:`taskflow_common.store.schedules.schedule_json` renders them (cadence,
zone, paused, next and last fire times, the last run's status); ``more`` says there are
others (the ingest API's ``GET /api/v1/schedules`` pages through all of them). Schedules
are managed over the ingest API, the client and the CLI; the console only shows them.
No parameters; Postgres down is 503 ``unavailable`` (:mod:`taskflow_common.http`).
"""

from __future__ import annotations

from typing import Any

import asyncpg
import falcon
import falcon.asgi
import orjson

from taskflow_common.db import Database
from taskflow_common.store import schedules

MAX_SHOWN = schedules.MAX_LIST_LIMIT
"""Most schedules the console lists (one page of the store's list)."""
ROUTE = "/api/v1/console/schedules"


class ScheduleList:
    """``GET /api/v1/console/schedules``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """List the first :data:`MAX_SHOWN` schedules by name."""

        async def fetch(conn: asyncpg.Connection) -> schedules.Page:
            return await schedules.list_schedules(conn, limit=MAX_SHOWN)

        page = await self.db.run(fetch)
        body: dict[str, Any] = {
            "items": [schedules.schedule_json(row) for row in page.rows],
            "more": page.next_cursor is not None,
        }
        resp.content_type = falcon.MEDIA_JSON
        resp.data = orjson.dumps(body)


def add_routes(app: falcon.asgi.App[Any, Any], db: Database) -> None:
    """Mount the schedule list on ``app``."""
    app.add_route(ROUTE, ScheduleList(db))
