"""Other installed commands the ``taskflow`` CLI hands over to (``taskflow js-info``).

The client is a library and never imports a service: where the CLI offers a service's
tool, it finds that tool's console script and runs it in its place.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence


def find_command(name: str) -> str | None:
    """Return the path of the console script ``name``, or None when it is not installed.

    Looks beside this interpreter's own scripts first (a venv not on PATH), then on PATH.
    """
    path = os.pathsep.join(p for p in (sysconfig.get_path("scripts"), os.environ.get("PATH")) if p)
    return shutil.which(name, path=path)


def hand_over(exe: str, args: Sequence[str]) -> int:
    """Run ``exe`` with ``args`` in place of this process; return its exit code.

    On POSIX the process is replaced (``execv``: stdin/stdout, signals and the exit code
    are the command's own) and this never returns; elsewhere the command runs as a
    subprocess and its exit code is returned. Raises ``OSError`` when it cannot start.
    """
    argv = [exe, *args]
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(exe, argv)  # noqa: S606 (no shell: the script's path and the user's args)
    return subprocess.run(argv, check=False).returncode
