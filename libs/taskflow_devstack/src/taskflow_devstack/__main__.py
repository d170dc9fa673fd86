"""``python -m taskflow_devstack {run,servers,migrate,stop}``: the dev stack CLI.

- ``run``: servers (embedded unless ``DATABASE_URL``/``NATS_URL`` are set), migrations,
  the four long-running services; waits for the API's health check, then serves until
  Ctrl-C/SIGTERM. Exit 0 after a signal, 1 when something fails to start or dies.
- ``servers``: servers and migrations only; prints ``DATABASE_URL=...`` and
  ``NATS_URL=...`` and stays in the foreground.
- ``migrate``: servers, database and migrations, then exits (stopping what it started).
- ``stop``: stops services and embedded servers recorded in ``.run/stack.json``;
  ``--purge`` also deletes the embedded Postgres clusters (dev and test).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from taskflow_devstack import commands
from taskflow_devstack.rundir import find_repo
from taskflow_devstack.stack import Stack


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run one subcommand; return the process exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m taskflow_devstack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["run", "servers", "migrate", "stop"])
    parser.add_argument(
        "--repo", type=Path, default=None, help="repository root (default: found from cwd)"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="state folder (default: <repo>/.run)"
    )
    parser.add_argument(
        "--purge",
        action="store_true",
        help="with stop: also delete the embedded clusters (dev and test)",
    )
    args = parser.parse_args(argv)
    repo = args.repo.resolve() if args.repo else find_repo()
    stack = Stack(repo=repo, environ=dict(os.environ), run_dir=args.run_dir)
    if args.command == "run":
        return commands.run(stack)
    if args.command == "servers":
        return commands.serve_servers(stack, sys.stdout)
    if args.command == "migrate":
        return commands.migrate_only(stack)
    stopped = stack.stop_recorded()
    stack.say(f"stopped {stopped} process(es)" if stopped else "nothing recorded was running")
    if args.purge:
        commands.purge(stack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
