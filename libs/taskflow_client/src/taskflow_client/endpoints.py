"""Where the TaskFlow APIs are and how long to wait: the part both clients share.

:class:`Endpoints` holds the ingest API's and the dlq-monitor's base URLs and the
per-request timeout; :class:`~taskflow_client.async_client.AsyncClient` and
:class:`~taskflow_client.sync_client.Client` build on it.
"""

from __future__ import annotations

from typing import Any

import httpx

from taskflow_client import calls
from taskflow_client.calls import Call

DEFAULT_API_URL = "http://127.0.0.1:8080"
DEFAULT_DLQ_URL = "http://127.0.0.1:8081"
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_WAIT_S = 60.0


class Endpoints:
    """Where the two APIs are and how long to wait for them: shared by both clients.

    ``api_url``/``dlq_url``: base URLs, with or without the ``/api/v1`` suffix;
    ``timeout``: seconds (> 0, else ValueError) to connect and for each answer.
    """

    def __init__(self, api_url: str, dlq_url: str, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout}")
        self.api_url = calls.base_url(api_url)
        self.dlq_url = calls.base_url(dlq_url)
        self.timeout = timeout

    def _url(self, call: Call[Any]) -> str:
        """The absolute URL of ``call``: on the ingest API or on the dlq-monitor."""
        return (self.api_url if call.service == "api" else self.dlq_url) + call.path

    def _timeout(self, call: Call[Any]) -> httpx.Timeout:
        """The ``httpx`` timeout of ``call``: :attr:`timeout`, plus a long poll's wait."""
        return httpx.Timeout(self.timeout, read=self.timeout + call.extra_timeout_s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(api_url={self.api_url!r}, dlq_url={self.dlq_url!r})"
