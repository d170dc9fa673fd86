"""Human output of a :class:`~taskflow_js_info.collect.Report`: rich tables."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from taskflow_js_info.collect import Report, StreamReport

_UNITS = ((86400.0, "d"), (3600.0, "h"), (60.0, "m"), (1.0, "s"))


def duration(seconds: float | None, zero: str = "unlimited") -> str:
    """``2592000`` -> ``30d``, ``90`` -> ``1m30s``, ``0.5`` -> ``500ms``, 0/None -> ``zero``."""
    if not seconds:
        return zero
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts = []
    left = seconds
    for size, unit in _UNITS:
        count = int(left // size)
        if count:
            parts.append(f"{count}{unit}")
            left -= count * size
    if left >= 0.001:
        parts.append(f"{left * 1000:.0f}ms")
    return "".join(parts[:2])


def size(num: int | None) -> str:
    """Bytes in binary units (``1536`` -> ``1.5 KiB``); negative/None -> ``unlimited``."""
    if num is None or num < 0:
        return "unlimited"
    value = float(num)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - loop always returns


def _limit(value: Any) -> str:
    return "unlimited" if value is None or value < 0 else str(value)


def _stream_table(stream: StreamReport) -> Table:
    cfg, state = stream.config, stream.state
    table = Table(
        title=f"Stream {stream.name} ({stream.role})",
        title_justify="left",
        box=box.SIMPLE,
        show_header=False,
    )
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("subjects", ", ".join(cfg["subjects"])),
        ("retention", str(cfg["retention"])),
        ("storage", str(cfg["storage"])),
        ("replicas", str(cfg["num_replicas"])),
        ("max age", duration(cfg["max_age"])),
        ("duplicate window", duration(cfg["duplicate_window"], zero="off")),
        ("max messages", _limit(cfg["max_msgs"])),
        ("max bytes", size(cfg["max_bytes"])),
        ("max message size", size(cfg["max_msg_size"])),
        ("discard", str(cfg["discard"])),
        ("messages", str(state["messages"])),
        ("bytes", size(state["bytes"])),
        ("sequences", f"{state['first_seq']}..{state['last_seq']}"),
        ("created", stream.created or "-"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


def _subjects_table(stream: StreamReport) -> Table:
    title = f"Messages per subject in {stream.name}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE, min_width=len(title) + 2)
    table.add_column("subject", overflow="fold")
    table.add_column("messages", justify="right")
    counts: dict[str, int] = stream.state["subjects"]
    configured: list[str] = stream.config["subjects"]
    # Configured subjects first, in their order (high, normal, low), then any others.
    for subject in [*configured, *sorted(set(counts) - set(configured))]:
        table.add_row(subject, str(counts.get(subject, 0)))
    return table


def _consumers_table(report: Report, stream: StreamReport) -> Table:
    table = Table(title=f"Consumers of {stream.name}", title_justify="left", box=box.SIMPLE)
    for name, justify in (
        ("consumer", "left"),
        ("filter", "left"),
        ("ack wait", "right"),
        ("max deliver", "right"),
        ("max ack pending", "right"),
        ("pending", "right"),
        ("ack pending", "right"),
        ("redelivered", "right"),
        ("waiting", "right"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for c in report.consumers_of(stream.name):
        cfg, state = c.config, c.state
        table.add_row(
            c.name if c.expected else f"{c.name} (not TaskFlow's)",
            ", ".join(cfg["filter_subjects"]) or "(all)",
            duration(cfg["ack_wait"], zero="-"),
            _limit(cfg["max_deliver"]),
            _limit(cfg["max_ack_pending"]),
            str(state["num_pending"]),
            str(state["num_ack_pending"]),
            str(state["num_redelivered"]),
            str(state["num_waiting"]),
        )
    missing = [m["name"] for m in report.missing_consumers if m["stream"] == stream.name]
    for name in missing:
        table.add_row(f"{name} (missing)", "", "", "", "", "", "", "", "", style="yellow")
    return table


def render(report: Report, console: Console) -> None:
    """Print ``report`` as a server line and, per stream, config, subjects and consumers."""
    server = report.server
    js = server["jetstream"]
    console.print(
        f"[bold]NATS {server['version']}[/bold] at {server['url']}: "
        f"{js['streams']} streams, {js['consumers']} consumers, "
        f"{size(js['storage_bytes'])} stored; max payload {size(server['max_payload'])}"
    )
    if not server["supported"]:
        console.print("[red]TaskFlow needs NATS >= 2.10; this server is older.[/red]")
    for stream in report.streams:
        console.print()
        if not stream.exists:
            console.print(f"[red]Stream {stream.name} ({stream.role}) does not exist.[/red]")
            continue
        console.print(_stream_table(stream))
        console.print(_subjects_table(stream))
        console.print(_consumers_table(report, stream))
