"""``js-info``: print TaskFlow's JetStream streams and consumers; change nothing.

Reads ``NATS_URL``, ``NATS_STREAM_NAME``, ``NATS_CONSUMER_NAME``, ``NATS_SUBJECT_PREFIX``
(and ``DLQ_*`` names derived from them) through :mod:`taskflow_common.config`.

Exit codes: 0 all TaskFlow streams exist; 2 bad configuration; 3 a TaskFlow stream does
not exist (what exists is still printed); 4 NATS or JetStream unreachable.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import orjson
import typer
from rich.console import Console

from taskflow_common.config import CommonSettings, load
from taskflow_common.errors import ConfigError
from taskflow_js_info.collect import Unreachable, collect
from taskflow_js_info.render import render

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_NO_STREAM = 3
EXIT_UNREACHABLE = 4

app = typer.Typer(
    add_completion=False,
    help="Show TaskFlow's JetStream streams and consumers (read-only).",
)


@app.command()
def show(
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print one JSON object (stable keys; durations in seconds, sizes in bytes).",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(help="Seconds to wait for NATS to connect and for each answer.", min=0.1),
    ] = 5.0,
) -> None:
    """Print the server version, each TaskFlow stream's config and state, and its consumers."""
    try:
        settings = load(CommonSettings)
    except ConfigError as exc:
        print(f"js-info: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_CONFIG) from None
    try:
        report = asyncio.run(collect(settings, timeout_s=timeout))
    except Unreachable as exc:
        print(f"js-info: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_UNREACHABLE) from None

    if as_json:
        sys.stdout.write(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        # Not a terminal (a pipe, a file): wide enough that names are never cut.
        out = Console() if sys.stdout.isatty() else Console(width=160)
        render(report, out)
    if report.missing_streams:
        for name in report.missing_streams:
            print(
                f"js-info: stream {name} does not exist on {report.server['url']} "
                "(no TaskFlow service has started against this NATS with these names?)",
                file=sys.stderr,
            )
        raise typer.Exit(EXIT_NO_STREAM)
