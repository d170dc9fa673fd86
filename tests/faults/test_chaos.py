"""The short chaos run (about a minute) inside ``make test``; ``make chaos`` is the full one."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.faults

LINE = re.compile(
    r"^chaos: submitted=(\d+) completed=(\d+) failed=(\d+) cancelled=(\d+) "
    r"dead_letters=(\d+) duplicates=(\d+) violations=(\d+)$"
)


def test_short_chaos_run_keeps_every_invariant() -> None:
    """45 s of mixed load and random faults, then I1-I6: no duplicate, no violation."""
    env = {**os.environ, "CHAOS_SECONDS": "45", "CHAOS_RATE": "12"}  # the short run: lighter
    out = subprocess.run(
        [sys.executable, "-m", "tests.chaos.chaos"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 1, f"stdout: {out.stdout!r}\nstderr:\n{out.stderr[-4000:]}"
    match = LINE.match(lines[0])
    assert match, lines[0]
    submitted, completed, failed, cancelled, letters, dups, violations = map(int, match.groups())
    assert out.returncode == 0, f"{lines[0]}\n{out.stderr[-4000:]}"
    assert submitted > 100
    assert completed + failed + cancelled == submitted
    assert letters == failed
    assert (dups, violations) == (0, 0)
