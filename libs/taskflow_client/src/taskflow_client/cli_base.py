"""What the ``taskflow`` commands share: exit codes, URL options, error mapping, JSON output.

:mod:`taskflow_client.cli` (tasks, dead letters) and :mod:`taskflow_client.schedules_cli`
(``taskflow schedules ...``) build on it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer

from taskflow_client.errors import NotFound, TaskFlowAPIError, Unavailable, ValidationFailed

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_REFUSED = 5
EXIT_STILL_RUNNING = 6
EXIT_CODES = {
    EXIT_OK: "ok",
    EXIT_TASK_FAILED: "the waited-for task failed or was cancelled",
    EXIT_USAGE: "usage error (bad arguments, or the API rejected the input)",
    EXIT_NOT_FOUND: "not found",
    EXIT_UNAVAILABLE: "API unreachable, timed out or unavailable",
    EXIT_REFUSED: "the API refused the request (e.g. 409 invalid_state) or failed (5xx)",
    EXIT_STILL_RUNNING: "--wait/wait timed out with the task not finished",
}
EPILOG = "Exit codes: " + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items())


ApiUrl = Annotated[
    str,
    typer.Option(
        "--api-url", envvar="TASKFLOW_API_URL", help="Ingest API base URL.", show_envvar=True
    ),
]
DlqUrl = Annotated[
    str,
    typer.Option(
        "--dlq-url", envvar="TASKFLOW_DLQ_URL", help="dlq-monitor base URL.", show_envvar=True
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int) -> NoReturn:
    """Print ``taskflow: message`` on stderr and exit with ``code``."""
    print(f"taskflow: {message}", file=sys.stderr)
    raise typer.Exit(code)


@contextmanager
def api_errors() -> Iterator[None]:
    """Map client errors onto exit codes, with the problem on stderr."""
    try:
        yield
    except NotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except Unavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except ValidationFailed as exc:
        lines = [str(exc), *(f"  {e.field}: {e.message}" for e in exc.errors)]
        fail("\n".join(lines), EXIT_USAGE)
    except TaskFlowAPIError as exc:
        fail(str(exc), EXIT_REFUSED)


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout (non-ASCII kept)."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def parse_payload(text: str | None) -> Any:
    """Decode a JSON argument (``-``: read stdin); None stays None. BadParameter if not JSON."""
    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint="PAYLOAD_JSON") from None


def parse_tags(values: list[str] | None) -> dict[str, str] | None:
    """``["k=v", ...]`` -> ``{"k": "v"}``; None for none. BadParameter for a bad item."""
    if not values:
        return None
    tags: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--tag")
        tags[key] = value
    return tags
