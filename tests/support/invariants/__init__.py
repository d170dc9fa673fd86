"""The execution-safety invariants of issue 4, checked against a running stack.

One checker for every fault scenario and for the chaos run. It reads what a user or an
operator can see: the ``tasks``, ``task_executions`` and ``dead_letters`` tables, the
dlq-monitor's list API, and the task consumers' state on the NATS server.

- **I1** every task reaches ``completed``/``failed``/``cancelled`` within the deadline;
- **I2** at most one ``succeeded`` execution per task, and no two executions of one task
  overlap in ``[started_at, finished_at]`` unless the earlier one is ``abandoned`` (its
  lease expired: the worker was gone or frozen and the attempt was taken over);
- **I3** no execution stays ``started`` once its worker process is gone; executions that
  ended ``abandoned``/``interrupted`` carry a reason;
- **I4** task status agrees with its executions (rows numbered 1..attempts, one success
  that is the last attempt for ``completed``, none for ``failed``, counted failures
  match ``failed_attempts``); every ``failed`` task has exactly one open dead letter that
  the dlq-monitor lists; no ``completed`` task has one;
- **I5** once all tasks are terminal, the three task consumers show 0 pending and 0
  ack-pending;
- **I6** a task's ``version`` only grows and a terminal status never changes except by
  an explicit replay: sampled during the scenario by :class:`VersionWatcher`, and
  compared once more with the final state.

Timestamps compared by I2 all come from the database clock (``now()``), so process
clocks do not matter.

The checker is split by role: :mod:`.report` (what was found), :mod:`.snapshot` (what
is read), :mod:`.rules` (I1-I5 on one snapshot), :mod:`.watcher` (I6 while a scenario
runs) and :mod:`.checker` (polling to a deadline).
"""

from tests.support.invariants.checker import check_invariants
from tests.support.invariants.report import Report, Violation
from tests.support.invariants.snapshot import consumer_states
from tests.support.invariants.watcher import VersionWatcher

__all__ = [
    "Report",
    "VersionWatcher",
    "Violation",
    "check_invariants",
    "consumer_states",
]
