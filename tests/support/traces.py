"""Handler runs as the ``test.trace`` handler writes them: what a user's side effects show.

Each run appends a ``start`` and an ``end`` line (Unix seconds; one machine, one clock)
to the file named in the task's payload. :func:`runs` pairs them per attempt and worker.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Run:
    """One handler run: ``end`` is None while it has not ended; ``how`` says how it did."""

    task: str
    attempt: int
    worker: str
    start: float
    end: float | None
    how: str


def runs(path: Path, task: str | None = None) -> list[Run]:
    """The runs recorded in ``path`` (of ``task`` only, if given), by start time."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    open_runs: dict[tuple[str, int, str], dict[str, object]] = {}
    out: list[Run] = []
    for line in lines:
        if task is not None and line["task"] != task:
            continue
        key = (line["task"], line["attempt"], line["worker"])
        if line["event"] == "start":
            open_runs[key] = line
            continue
        start = open_runs.pop(key)
        out.append(Run(*key, float(start["t"]), float(line["t"]), line["how"]))  # type: ignore[arg-type]
    out.extend(Run(*k, float(s["t"]), None, "running") for k, s in open_runs.items())  # type: ignore[arg-type]
    return sorted(out, key=lambda r: r.start)


def overlapping(found: list[Run], now: float) -> list[tuple[Run, Run]]:
    """Pairs of runs of one task that ran at the same time (an open run lasts until ``now``)."""
    pairs = []
    for a, b in itertools.combinations(found, 2):
        if a.task == b.task and a.start < (b.end or now) and b.start < (a.end or now):
            pairs.append((a, b))
    return pairs
