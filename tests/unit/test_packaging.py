"""Each deployable installs on its own: every import it makes is a declared dependency.

A service's Dockerfile installs only ``libs/taskflow_common`` and that service, so an
import satisfied here merely because another service pulled the package into the shared
``.venv`` would break that image. This test reads each service's ``pyproject.toml`` and
the top-level imports of its source, and checks each third-party import against the
closure of the distributions the service declares (transitively, from the installed
metadata). ``tox -e svc-<name>`` does the same check for real, in a fresh venv.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.parent for p in ROOT.glob("services/*/pyproject.toml"))
LOCAL = {"taskflow_common", "taskflow_client"}


def _name(requirement: str) -> tuple[str, set[str]]:
    """Distribution name (normalised) and extras of a PEP 508 requirement string."""
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[([^\]]*)\])?", requirement)
    assert m is not None, requirement
    extras = {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}
    return re.sub(r"[-_.]+", "-", m.group(1)).lower(), extras


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution reachable from ``requirements`` through installed metadata."""
    seen: set[str] = set()
    todo = [_name(r) for r in requirements if ";" not in r or _marker_ok(r)]
    while todo:
        name, extras = todo.pop()
        key = name
        if key in seen and not extras:
            continue
        seen.add(key)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in reqs:
            base, _, marker = r.partition(";")
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if extra and extra.group(1) not in extras:
                continue
            if marker and not extra and not _marker_ok(r):
                continue
            todo.append(_name(base))
    return seen


def _marker_ok(requirement: str) -> bool:
    from packaging.requirements import Requirement

    marker = Requirement(requirement).marker
    return marker is None or marker.evaluate({"extra": ""})


def _imports(src: Path) -> set[str]:
    """Top-level module names imported anywhere under ``src`` (absolute imports only)."""
    names: set[str] = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("service", SERVICES, ids=lambda p: p.name)
def test_every_import_of_a_service_is_a_declared_dependency(service: Path) -> None:
    project = tomllib.loads((service / "pyproject.toml").read_text(encoding="utf-8"))
    declared = _closure(project["project"]["dependencies"])
    own = {p.name for p in (service / "src").iterdir() if p.is_dir()}
    dists = md.packages_distributions()
    missing = {}
    for module in sorted(_imports(service / "src") - own - LOCAL - set(sys.stdlib_module_names)):
        owners = {_name(d)[0] for d in dists.get(module, [])}
        assert owners, f"{service.name}: import {module!r} comes from no installed distribution"
        if not owners & declared:
            missing[module] = sorted(owners)
    assert missing == {}, f"{service.name} imports packages its pyproject.toml does not declare"


def test_the_check_sees_a_missing_dependency() -> None:
    """The closure is not everything installed: a test tool is outside a service's."""
    declared = _closure(["taskflow-common"])
    assert "asyncpg" in declared
    assert "pytest" not in declared
    assert "falcon" not in declared  # only with the [http] extra
    assert "falcon" in _closure(["taskflow-common[http]"])
