"""The dead-letter console: one static page (HTML, CSS, vanilla JS) served by the dlq-monitor.

No build step: the three files under ``console/`` are read once at import and served
as they are. The page talks only to this service's JSON API (same origin):

- ``GET /api/v1/dlq`` every :data:`REFRESH_S` seconds (newest first; filters type,
  error text, status) and ``GET /api/v1/dlq/stats`` for the type suggestions;
- ``GET /api/v1/dlq/{id}`` for the detail view (payload, every attempt);
- ``POST /api/v1/dlq/{task_id}/replay``, ``POST /api/v1/dlq/{id}/discard``;
- ``POST /api/v1/dlq/replay`` with ``dry_run`` to show how many tasks match before the
  operator confirms "replay all matching", then without it;
- ``GET /api/v1/console/schedules`` for the read-only schedule table (``schedules.js``).

Routes: ``GET /`` and ``GET /console`` (the page), ``GET /console/{asset}``
(``console.js``, ``schedules.js``, ``console.css``). Responses carry a strict
Content-Security-Policy (same-origin scripts, styles and requests only; the page builds the DOM with
``textContent``, never ``innerHTML``, so error texts cannot inject markup).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import falcon
import falcon.asgi

REFRESH_S = 3
"""How often the page polls the list (and an open detail), in seconds (the JS reads it)."""

_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "schedules.js": "text/javascript; charset=utf-8",
}
_FILES: dict[str, bytes] = {
    name: (resources.files("taskflow_dlq_monitor") / "console" / name).read_bytes()
    for name in _TYPES
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _send(resp: falcon.asgi.Response, name: str) -> None:
    resp.content_type = _TYPES[name]
    resp.data = _FILES[name]
    resp.set_headers(_HEADERS)


class Page:
    """``GET /`` and ``GET /console``: the console's HTML."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Serve ``index.html``."""
        _send(resp, "index.html")


class Asset:
    """``GET /console/{name}``: the script and the style sheet."""

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, name: str) -> None:
        """Serve a script or the style sheet; anything else is 404 ``not_found``."""
        if name not in _TYPES or name == "index.html":
            raise falcon.HTTPNotFound()
        _send(resp, name)


def add_routes(app: falcon.asgi.App[Any, Any]) -> None:
    """Mount the console on ``app``."""
    page = Page()
    app.add_route("/", page)
    app.add_route("/console", page)
    app.add_route("/console/{name}", Asset())
