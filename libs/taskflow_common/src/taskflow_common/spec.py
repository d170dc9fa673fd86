"""What a task spec may say: the limits every way of creating a task checks, and the spec.

One home for the rules that the ingest API (``taskflow_ingest_api.validation``, with
pydantic) and the client's transactional enqueue (``taskflow_client.enqueue``, on Python
values) both enforce, so that the two accept exactly the same tasks: the task ``type``
pattern, the attempt, delay, timeout, tag and idempotency-key limits with the sentence
each rule is reported with, what Postgres ``jsonb`` can hold (:func:`json_problems`), and
the validated :class:`TaskSpec` that :mod:`taskflow_common.store.submissions` writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from taskflow_common.subjects import PRIORITIES, Priority

TYPE_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
"""What ``tasks.type`` accepts (the same CHECK as migrations/0001_tasks.sql)."""
TYPE_RULE = "must be 1..128 characters of A-Z a-z 0-9 _ . : -"
PRIORITY_RULE = "must be one of: " + ", ".join(PRIORITIES)

MIN_ATTEMPTS = 1
MAX_ATTEMPTS = 100
"""``max_attempts`` is 1..100."""
ATTEMPTS_RULE = f"must be an integer from {MIN_ATTEMPTS} to {MAX_ATTEMPTS}"

MAX_DELAY_MS = 31_536_000_000
"""Longest ``delay_ms``: 365 days in milliseconds."""
DELAY_RULE = f"must be an integer from 0 to {MAX_DELAY_MS} (milliseconds)"
BOTH_RULE = "give run_at or delay_ms, not both"

MAX_TIMEOUT_S = 86_400.0
"""Largest per-task ``timeout_s``: one day."""
TIMEOUT_RULE = f"must be a number above 0 and at most {MAX_TIMEOUT_S:g} (seconds)"

MAX_TAGS = 32
"""Most tags on one task."""
TAG_KEY_CHARS = 128
"""Longest tag key (characters); a key is at least one character and holds no ``:``."""
TAG_VALUE_CHARS = 512
"""Longest tag value (characters); may be empty."""
TAG_KEY_PATTERN = rf"^[^:\x00]{{1,{TAG_KEY_CHARS}}}$"
TAG_VALUE_PATTERN = rf"^[^\x00]{{0,{TAG_VALUE_CHARS}}}$"


def tags_rule(container: str) -> str:
    """The sentence a bad ``tags`` is reported with; ``container`` is "an object" (JSON)
    or "a mapping" (Python)."""
    return (
        f"must be {container} of at most {MAX_TAGS} string values: keys 1..{TAG_KEY_CHARS} "
        f"characters without ':', values at most {TAG_VALUE_CHARS} characters, no \\u0000"
    )


IDEMPOTENCY_KEY_PATTERN = re.compile(r"^[\x20-\x7e]{1,255}$")
"""An ``Idempotency-Key`` (header, batch item or enqueue argument): printable ASCII."""
IDEMPOTENCY_KEY_RULE = "must be 1..255 printable ASCII characters"

DEFAULT_JSON_DEPTH = 64
"""Deepest payload nesting accepted by default (``MAX_JSON_DEPTH`` of the ingest API)."""
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def tags_ok(tags: Any) -> bool:
    """Whether ``tags`` (a Python value) is an acceptable tag mapping (see :func:`tags_rule`)."""
    if not isinstance(tags, Mapping) or len(tags) > MAX_TAGS:
        return False
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            return False
        if not 1 <= len(key) <= TAG_KEY_CHARS or ":" in key or "\x00" in key:
            return False
        if len(value) > TAG_VALUE_CHARS or "\x00" in value:
            return False
    return True


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """A validated, normalised request to create one task.

    ``payload`` is any JSON value that passed :func:`json_problems`. ``max_attempts``
    is already resolved (1..100). The optional fields are the per-task options of later
    API versions; they enter the request hash only when set, so adding them does not
    change the hash of requests that do not use them. ``run_at`` (aware datetime) and
    ``delay_s`` (seconds) schedule the first run; a time in the past means now.
    """

    type: str
    payload: Any = field(default_factory=dict)
    priority: Priority = "normal"
    max_attempts: int = 3
    idempotency_key: str | None = None
    timeout_s: float | None = None
    tags: Mapping[str, str] | None = None
    run_at: dt.datetime | None = None
    delay_s: float | None = None

    def canonical(self) -> bytes:
        """Return the canonical JSON of what the request asks for (keys sorted, compact).

        The idempotency key itself is not part of it: it names the request, the
        canonical form is what the request says.
        """
        doc: dict[str, Any] = {
            "type": self.type,
            "payload": self.payload,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
        }
        if self.timeout_s is not None:
            doc["timeout_s"] = self.timeout_s
        if self.tags:
            doc["tags"] = dict(self.tags)
        if self.run_at is not None:
            doc["run_at"] = self.run_at.astimezone(dt.UTC).isoformat()
        if self.delay_s is not None:
            doc["delay_s"] = self.delay_s
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    def request_hash(self) -> bytes:
        """Return sha256(:meth:`canonical`), 32 bytes; stored in ``tasks.request_hash``."""
        return hashlib.sha256(self.canonical()).digest()


def json_problems(value: Any, path: str, max_depth: int) -> list[tuple[str, str]]:
    """List what stops ``value`` (decoded JSON) from being stored as ``jsonb``.

    Returns ``[(field_path, message)]``, empty when the value is fine; paths look like
    ``payload.items[3].name``. Rejected: non-finite floats (``1e400`` decodes to inf),
    integers outside int64 (clients in most languages cannot read them back), ``\\u0000``
    in any string or object key (jsonb refuses it), and containers nested more than
    ``max_depth`` levels (``{}`` and ``[]`` are one level). Iterative, so a deep value
    cannot exhaust the Python stack. Stops after 20 problems.

    Cost: a clean value is checked in one pass that builds no paths (about 50 ms for
    the worst case a 1 MiB body can hold, an array of half a million numbers); paths
    are worked out only once a problem was found.
    """
    if _clean(value, max_depth):
        return []
    return _problems(value, path, max_depth)


def _scalar_ok(item: Any) -> bool:
    kind = type(item)
    if kind is str:
        return "\x00" not in item
    if kind is int:
        return bool(INT64_MIN <= item <= INT64_MAX)
    if kind is float:
        return math.isfinite(item)
    return item is None or kind is bool


def _clean(value: Any, max_depth: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is not list and kind is not dict:
            if not _scalar_ok(item):
                return False
            continue
        depth += 1
        if depth > max_depth:
            return False
        if kind is dict:
            for key in item:
                if "\x00" in key:
                    return False
            children = item.values()
        else:
            children = item
        # Scalars are checked in place (most of a payload); containers wait on the stack.
        for child in children:
            ck = type(child)
            if ck is list or ck is dict:
                stack.append((child, depth))
            elif ck is int:
                if not INT64_MIN <= child <= INT64_MAX:
                    return False
            elif ck is str:
                if "\x00" in child:
                    return False
            elif not _scalar_ok(child):
                return False
    return True


def _problems(value: Any, path: str, max_depth: int) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack and len(problems) < 20:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                problems.append((where, "must not contain the NUL character (\\u0000)"))
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT64_MIN <= item <= INT64_MAX:
                problems.append((where, "integer out of range (must fit in 64-bit signed)"))
        elif isinstance(item, float):
            if not math.isfinite(item):
                problems.append((where, "number out of range (must be finite)"))
        elif isinstance(item, dict | list):
            if depth + 1 > max_depth:
                problems.append((where, f"nested deeper than {max_depth} levels"))
                continue
            # Pushed in reverse so that problems come out in document order.
            if isinstance(item, dict):
                for key, sub in reversed(item.items()):
                    if "\x00" in key:
                        problems.append((f"{where}.{key}", "object keys must not contain \\u0000"))
                    stack.append((sub, f"{where}.{key}", depth + 1))
            else:
                for index in range(len(item) - 1, -1, -1):
                    stack.append((item[index], f"{where}[{index}]", depth + 1))
        else:
            problems.append((where, f"not a JSON value ({type(item).__name__})"))
    return problems
