"""TaskFlow worker. Handler authors import the API from here."""

from taskflow_worker.handlers import PermanentError, TaskContext, handler

__all__ = ["PermanentError", "TaskContext", "handler"]
