"""The API contract as the README documents it, parsed, for tests to check the code against.

Tests compare what the API returns (and what its OpenAPI document declares) with these
lists, never with the code's own constants: a field or code added, renamed or dropped
without the README saying so fails a test. The README's wording these parsers rely on:

- ``A task, answered as ...: `id, type, ..., finished_at` `` (values in parentheses are
  the field's allowed values: ``priority (high|normal|low)``);
- ``An execution: `id, task_id, ..., duration_ms` ``;
- ``with a stable `code`: `invalid_json`, ..., `internal_error`.``
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass(frozen=True, slots=True)
class Fields:
    """A documented object: its field names in order, and each enum field's values."""

    names: tuple[str, ...]
    values: dict[str, tuple[str, ...]]


def _between(text: str, start: str, end: str) -> str:
    """The text after ``start`` up to ``end``; ``AssertionError`` when either is missing."""
    at = text.find(start)
    assert at >= 0, f"README.md no longer says {start!r}: update tests/support/contract.py"
    stop = text.find(end, at + len(start))
    assert stop >= 0, f"README.md: no {end!r} after {start!r}"
    return text[at + len(start) : stop]


def _fields(spec: str) -> Fields:
    """Parse ``a, b (x|y), c`` into names and enum values (whitespace and newlines ignored)."""
    spec = " ".join(spec.split())
    names: list[str] = []
    values: dict[str, tuple[str, ...]] = {}
    for item in re.finditer(r"([a-z_]+)\s*(?:\(([^)]*)\))?\s*(?:,|$)", spec):
        names.append(item.group(1))
        if item.group(2):
            values[item.group(1)] = tuple(v.strip() for v in item.group(2).split("|"))
    assert names, f"README.md: no field list in {spec!r}"
    return Fields(tuple(names), values)


@cache
def _readme() -> str:
    return README.read_text(encoding="utf-8")


def task_fields() -> Fields:
    """The task object's fields as the README lists them (``A task, answered as ...``)."""
    section = _between(_readme(), "A task, answered as", "An execution:")
    spans = re.findall(r"`([^`]*)`", section, flags=re.S)
    spec = next((s for s in spans if s.startswith("id, type")), None)
    assert spec is not None, "README.md: no `id, type, ...` list after 'A task, answered as'"
    return _fields(spec)


def execution_fields() -> Fields:
    """The execution object's fields as the README lists them (``An execution: ...``)."""
    section = _between(_readme(), "An execution:", "\n\n")
    spans = re.findall(r"`([^`]*)`", section, flags=re.S)
    assert spans, "README.md: no `...` list after 'An execution:'"
    return _fields(spans[0])


def problem_codes() -> tuple[str, ...]:
    """Every problem ``code`` the README lists (``with a stable `code`: ...``)."""
    section = _between(_readme(), "with a stable `code`:", ".\n")
    codes = tuple(re.findall(r"`([a-z_]+)`", section))
    assert codes, "README.md: no codes after 'with a stable `code`:'"
    return codes
