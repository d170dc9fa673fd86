"""py-spy around a burst: sample the API, dispatcher and worker, then rank functions.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``, each
frame ``function (file:line)``); :func:`summarise` ranks functions by *self* samples
(the innermost frame) and by *total* samples (anywhere on the stack), line numbers
dropped. Idle samples (the event loop waiting in epoll) are left out by py-spy, so the
shares are of the time each process was on a CPU.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_FRAME_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    """The ``py-spy`` executable of this environment or on PATH, if installed."""
    here = Path(sysconfig.get_path("scripts")) / "py-spy"
    return str(here) if here.is_file() else shutil.which("py-spy")


@dataclass
class Recording:
    """One running ``py-spy record`` attached to a process."""

    name: str
    out: Path
    proc: asyncio.subprocess.Process

    async def stop(self) -> None:
        """SIGINT py-spy (it then writes its file) and wait for it, by its PID."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def record(exe: str, name: str, pid: int, out_dir: Path, rate: int = 100) -> Recording:
    """Start sampling ``pid`` at ``rate`` Hz into ``<out_dir>/<name>.txt`` (raw format)."""
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before sampling
    out = out_dir / f"{name}.txt"
    log = (out_dir / f"{name}.py-spy.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate), "--gil",
        "--output", str(out), "--duration", "600",
        stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    log.close()
    return Recording(name, out, proc)


def _function(frame: str) -> str:
    return _FRAME_LINE.sub(")", frame.strip())


def _package(frame: str) -> str:
    """``Connection.execute (asyncpg/connection.py)`` -> ``asyncpg``; stdlib files by name."""
    inside = frame.rpartition("(")[2].rstrip(")")
    head = inside.split("/", 1)[0] if "/" in inside else inside.removesuffix(".py")
    return head or "?"


def summarise(path: Path, top: int = 15) -> dict[str, object]:
    """Rank the functions of one raw py-spy file.

    Returns ``{"samples", "self", "total", "packages"}``: ``self`` and ``total`` are
    lists of ``[function, share of samples in %]`` (``total`` leaves out the frames on
    more than 90 % of the stacks: the entry point and the event loop); ``packages``
    ranks the innermost frame's package (``asyncpg``, ``nats``, ``taskflow_worker``...).
    """
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";") if f]
        # The first frame is the thread ("process 123:..." / "thread (0x..)"): skip it.
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        self_counts[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for f in set(frames):
            total_counts[f] += count

    def share(counter: Counter[str], limit: int) -> list[list[object]]:
        return [
            [f, round(c / samples * 100, 1)]
            for f, c in counter.most_common()
            if c <= 0.9 * samples or counter is not total_counts
        ][:limit]

    return {
        "samples": samples,
        "self": share(self_counts, top),
        "total": share(total_counts, top + 10),
        "packages": share(packages, 12),
    }


def render(summaries: dict[str, dict[str, object]]) -> str:
    """A plain-text report: per process, the top self and total functions."""
    lines: list[str] = []
    for name, s in summaries.items():
        lines.append(f"== {name}: {s['samples']} samples on CPU")
        lines.append("  self %  function")
        for f, pct in s["self"]:  # type: ignore[attr-defined]
            lines.append(f"  {pct:6.1f}  {f}")
        lines.append("  total %  function (below the entry point and the event loop)")
        for f, pct in s["total"]:  # type: ignore[attr-defined]
            lines.append(f"  {pct:7.1f}  {f}")
        lines.append("  self %  package")
        for f, pct in s["packages"]:  # type: ignore[attr-defined]
            lines.append(f"  {pct:6.1f}  {f}")
        lines.append("")
    return "\n".join(lines)
