"""The short chaos run (about a minute) inside ``make test``; ``make chaos`` is the full one.

The test chooses the run's seed (``CHAOS_SEED`` from the environment, else a random one)
and names it in every failure message, with the command that replays the same run.
"""

from __future__ import annotations

import os
import random
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
    seed = os.environ.get("CHAOS_SEED") or str(random.SystemRandom().randrange(1 << 30))
    short = {"CHAOS_SECONDS": "45", "CHAOS_RATE": "12", "CHAOS_SEED": seed}  # lighter
    replay = " ".join(f"{k}={v}" for k, v in short.items()) + " make chaos"
    out = subprocess.run(
        [sys.executable, "-m", "tests.chaos.chaos"],
        cwd=REPO,
        env={**os.environ, **short},
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )

    def why(what: str) -> str:
        return f"{what}\nchaos seed {seed}; replay with: {replay}\nstderr:\n{out.stderr[-4000:]}"

    lines = out.stdout.splitlines()
    assert len(lines) == 1, why(f"stdout: {out.stdout!r}")
    match = LINE.match(lines[0])
    assert match, why(lines[0])
    submitted, completed, failed, cancelled, letters, dups, violations = map(int, match.groups())
    assert out.returncode == 0, why(lines[0])
    assert submitted > 100, why(lines[0])
    assert completed + failed + cancelled == submitted, why(lines[0])
    assert letters == failed, why(lines[0])
    assert (dups, violations) == (0, 0), why(lines[0])
