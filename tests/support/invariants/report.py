"""What the invariant checker found: violations and the run's report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tests.support.stack import TERMINAL

COUNTED = {"failed", "abandoned"}
"""Execution statuses that count against ``max_attempts``."""


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: which one, for which task (if any), and what was seen."""

    invariant: str
    task_id: str | None
    detail: str

    def __str__(self) -> str:
        where = f" task {self.task_id}" if self.task_id else ""
        return f"{self.invariant}{where}: {self.detail}"


@dataclass
class Report:
    """What :func:`check_invariants` found.

    ``statuses`` counts the tasks' final statuses; ``dead_letters`` is the number of open
    dead letters of these tasks; ``duplicates`` the tasks with more than one succeeded
    execution; ``executions`` the number of execution rows.
    """

    submitted: int
    statuses: Counter[str]
    dead_letters: int
    duplicates: int
    executions: int
    violations: list[Violation]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        """True when no invariant is broken."""
        return not self.violations

    def of(self, *invariants: str) -> list[Violation]:
        """The violations of the named invariants (``"I2"``, ...)."""
        return [v for v in self.violations if v.invariant in invariants]

    @property
    def all_terminal(self) -> bool:
        """True when every submitted task ended terminal."""
        return sum(self.statuses[s] for s in TERMINAL) == self.submitted

    def line(self) -> str:
        """The one-line summary the chaos run prints."""
        return (
            f"chaos: submitted={self.submitted} completed={self.statuses['completed']} "
            f"failed={self.statuses['failed']} cancelled={self.statuses['cancelled']} "
            f"dead_letters={self.dead_letters} duplicates={self.duplicates} "
            f"violations={len(self.violations)}"
        )

    def describe(self, limit: int = 30) -> str:
        """The summary line plus up to ``limit`` violations, one per line."""
        lines = [self.line(), f"statuses: {dict(self.statuses)}"]
        lines += [f"  {v}" for v in self.violations[:limit]]
        if len(self.violations) > limit:
            lines.append(f"  ... and {len(self.violations) - limit} more")
        return "\n".join(lines)

    def assert_ok(self, *invariants: str) -> None:
        """Raise ``AssertionError`` listing the violations (of ``invariants``, or all)."""
        found = self.of(*invariants) if invariants else self.violations
        assert not found, self.describe()
