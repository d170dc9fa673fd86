"""The run folder (``<repo>/.run``): where the checkout is, and what runs from it.

``stack.json`` records the ports, directories and PIDs of the servers and services a
``make run`` started, so a second run reuses them and ``make stop`` stops them by PID;
``stack.lock`` serialises runs of one checkout. The test harness keeps its Postgres
cluster here too (:func:`test_pg_dir`), guarded by an ``flock`` (:func:`test_pg_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from taskflow_devstack.postgres import pg_work_dir


def find_repo(start: Path | None = None) -> Path:
    """Return the nearest folder at or above ``start`` (default cwd) with ``migrations/``
    and ``libs/taskflow_common``; ``start`` itself when none is found."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "migrations").is_dir() and (folder / "libs" / "taskflow_common").is_dir():
            return folder
    return here


class StateFile:
    """``<run_dir>/stack.json``: a JSON object of records (``postgres``, ``nats``, ``services``).

    Writes are atomic (temp file + rename); an unreadable or missing file reads as ``{}``.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "stack.json"

    def load(self) -> dict[str, Any]:
        """Return the recorded state (empty when there is none or it is unreadable)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` atomically (temp file + rename)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)

    def update(self, key: str, value: Any) -> None:
        """Set record ``key`` to ``value`` (None removes it), keeping the others."""
        state = self.load()
        if value is None:
            state.pop(key, None)
        else:
            state[key] = value
        self.save(state)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``<run_dir>/stack.lock`` (``flock``, exclusive) for the ``with`` block."""
        # Two `make run` started together must not both start a server on one data dir.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / "stack.lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield


def test_pg_dir(run_dir: Path) -> Path:
    """Where the test harness keeps its initdb'd Postgres cluster between runs."""
    return pg_work_dir(run_dir / "test-pg", "test-pg")


def test_pg_lock(run_dir: Path) -> Path:
    """The lock file a test session holds (``flock``) while it uses :func:`test_pg_dir`."""
    folder = test_pg_dir(run_dir)
    return folder.with_name(folder.name + ".lock")
