"""How a service under test ended: its exit code and the errors in its log.

At teardown the ``services`` fixture asks every process it started for
:func:`problems`; any problem fails the test, naming the service and showing the lines.

- **Exit code.** A service stopped with SIGTERM must exit with one of
  :data:`CLEAN_EXIT_CODES` within the stop timeout; one that exited by itself during the
  test must have exited cleanly too. Not checked when the test killed it on purpose
  (:meth:`ServiceProcess.kill` marks that, or :meth:`~ServiceProcess.expect_exit` with
  a reason), or when the test read the code itself (:meth:`~ServiceProcess.wait`,
  whose caller asserts on it).
- **Log.** Every JSON line at level ``error``/``critical``, every line containing
  ``Traceback`` (a JSON line's ``exc`` field or a plain traceback), and every plain line
  with an ``ERROR``/``CRITICAL`` level word is a problem, unless an allow-list pattern
  declared by the test matches it (:meth:`ServiceFactory.allow` for every service of
  the test, :meth:`ServiceProcess.allow_log` for one). Each declaration carries its
  reason, shown when a line it did not cover fails the test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CLEAN_EXIT_CODES = frozenset({0})
"""Exit codes of a clean stop: every service exits 0 after SIGTERM (``run_service``)."""

MAX_LINES = 20
"""Problem lines shown per service (the full log's path is shown with them)."""

_PLAIN_LEVEL = re.compile(r"\b(ERROR|CRITICAL)\b")
# The line that ends a plain traceback: "ValueError: ...", "| asyncpg.exceptions.X: ...".
_RAISED = re.compile(r"^[\s|+]*[A-Za-z_][\w.]*(Error|Exception|Group|Exit|Interrupt)\b")


@dataclass(frozen=True, slots=True)
class Allowance:
    """A log line a test expects: ``pattern`` (a regex searched in the raw line), why."""

    pattern: re.Pattern[str]
    reason: str

    @classmethod
    def of(cls, pattern: str, reason: str) -> Allowance:
        """Compile ``pattern``; ``ValueError`` without a reason (each one needs one)."""
        if not reason.strip():
            raise ValueError(f"an allowed log pattern needs a reason: {pattern!r}")
        return cls(re.compile(pattern), reason)


def is_error_line(line: str) -> bool:
    """True for an ERROR/CRITICAL log line or any line that carries a traceback."""
    if "Traceback" in line:
        return True
    stripped = line.strip()
    if stripped.startswith("{"):
        try:
            obj = json.loads(stripped)
        except ValueError:
            return bool(_PLAIN_LEVEL.search(line))
        return isinstance(obj, dict) and str(obj.get("level", "")).lower() in {
            "error",
            "critical",
        }
    return bool(_PLAIN_LEVEL.search(line))


def _raised(after: Sequence[str], *, group: bool) -> str | None:
    """The exception a plain traceback ends with (an exception group's: its last one)."""
    if not group:
        return next((x for x in after if _RAISED.match(x)), None)
    found = None
    for x in after:
        if not x[:1].isspace() and not x.startswith(("|", "+")):
            break  # the group's block (indented, ``|``/``+`` framed) has ended
        if _RAISED.match(x):
            found = x
    return found


def error_lines(log: str, allowed: Iterable[Allowance]) -> list[str]:
    """The lines of ``log`` that :func:`is_error_line` flags and no allowance matches.

    A plain (non-JSON) ``Traceback`` line is reported with the exception that ends it
    (``Traceback (most recent call last):  => asyncpg...InternalClientError: ...``), and
    allowances are matched against that text, so one can name the exception.
    """
    rules = list(allowed)
    lines = log.splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        if not is_error_line(line):
            continue
        entry = line
        if "Traceback" in line and not line.lstrip().startswith("{"):
            raised = _raised(lines[i + 1 :], group="Exception Group" in line)
            if raised is not None:
                entry = f"{line.rstrip()}  => {raised.strip(' |+')}"
        if not any(a.pattern.search(entry) for a in rules):
            out.append(entry)
    return out


def exit_problem(
    returncode: int | None,
    *,
    expected: str | None,
    seen: bool,
    forced: bool,
    died_by_itself: bool,
    timeout_s: float,
) -> str | None:
    """What is wrong with how a process ended, or None.

    ``expected``: the reason it may end any way (killed on purpose); ``seen``: the test
    read the code itself; ``forced``: SIGTERM was not enough within ``timeout_s`` and
    SIGKILL followed; ``died_by_itself``: it had exited before anyone stopped it.
    """
    if expected is not None or seen:
        return None
    if forced:
        return f"did not exit within {timeout_s:g} s of SIGTERM (killed)"
    if returncode in CLEAN_EXIT_CODES:
        return None
    when = "by itself during the test" if died_by_itself else "after SIGTERM"
    return f"exited with {returncode} {when} (clean: {sorted(CLEAN_EXIT_CODES)})"


def describe(
    name: str,
    pid: int | None,
    log_path: str,
    exit_note: str | None,
    lines: Sequence[str],
    allowed: Sequence[Allowance],
) -> str:
    """One service's problems as a block of text for the failure message."""
    out = [f"--- {name} pid={pid} ({log_path})"]
    if exit_note:
        out.append(f"  exit: {exit_note}")
    if lines:
        out.append(f"  {len(lines)} ERROR/Traceback line(s) no allowance covers:")
        out += [f"    {line[:2000]}" for line in lines[:MAX_LINES]]
        if len(lines) > MAX_LINES:
            out.append(f"    ... and {len(lines) - MAX_LINES} more")
        if allowed:
            out.append(
                "  allowed for this test: "
                + "; ".join(f"{a.pattern.pattern!r} ({a.reason})" for a in allowed)
            )
    return "\n".join(out)
