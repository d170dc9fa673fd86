"""The house rules of issue 10, checked: no source file over 400 lines, no class over 250.

Data files (the Grafana dashboard, JSON and YAML) are not source; every ``.py`` file
under ``libs/``, ``services/`` and ``tests/`` is, and so are the console's JS and HTML.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_FILE_LINES = 400
MAX_CLASS_LINES = 250
SOURCES = sorted(
    p
    for top in ("libs", "services", "tests")
    for pattern in ("*.py", "*.js", "*.html")
    for p in (ROOT / top).rglob(pattern)
    if ".venv" not in p.parts and "node_modules" not in p.parts
)


def test_the_tree_has_sources() -> None:
    assert len(SOURCES) > 100


def test_no_source_file_over_the_limit() -> None:
    sizes = {p: p.read_text(encoding="utf-8").count("\n") for p in SOURCES}
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p, n in sizes.items() if n > MAX_FILE_LINES]
    assert big == []


def test_no_class_over_the_limit() -> None:
    big = []
    for path in SOURCES:
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    big.append(f"{path.relative_to(ROOT)}::{node.name} ({size} lines)")
    assert big == []
