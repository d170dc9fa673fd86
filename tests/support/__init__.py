"""Test helpers: deadline polling, services as subprocesses, the session's Postgres."""

from tests.support.pg import PgHandle
from tests.support.procs import ServiceFactory, ServiceProcess
from tests.support.waiting import wait_for

__all__ = ["PgHandle", "ServiceFactory", "ServiceProcess", "wait_for"]
