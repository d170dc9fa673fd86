"""The dev stack's one error, a branch of TaskFlow's tree (:class:`TaskFlowError`).

It stays in this package rather than in ``taskflow_common.errors``: only the dev stack
and the test harness raise or catch it, and the runtime library every service image
installs should not name a tool it does not ship.
"""

from __future__ import annotations

from taskflow_common.errors import TaskFlowError


class DevStackError(TaskFlowError, RuntimeError):
    """An embedded server could not be set up, started or stopped; the message says why."""
