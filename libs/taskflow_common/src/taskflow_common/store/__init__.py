"""All SQL against the task tables lives in this package, one module per concern.

- :mod:`.rows`: row shapes and their JSON form (tasks, executions, dead letters);
- :mod:`.cursor`: the keyset cursor every listing hands out;
- :mod:`.submissions`: create tasks (single, batch, group commit) from a
  :class:`~taskflow_common.spec.TaskSpec`;
- :mod:`.tasks`: read, list, cancel (the ingest API's side);
- :mod:`.outbox`: due tasks and dead letters to publish, lease reaping (the dispatcher);
- :mod:`.claims`: claim a task for an attempt, diagnose a refusal, adopt (the worker);
- :mod:`.attempts`: finish an attempt, renew leases, abandon lost ones (the worker, the
  dispatcher's reaper);
- :mod:`.deadletters`: the dead-letter record and its replay/discard (the dlq-monitor);
- :mod:`.deadletter_bulk`: replay every dead-lettered task matching a filter;
- :mod:`.deadletter_stats`: dead-letter counts by type, error and status over windows;
- :mod:`.schedules`: schedule definitions and run-now (the ingest API's side);
- :mod:`.schedule_ticks`: the tick pass that turns due ticks into tasks (the dispatcher);
- :mod:`.retention`: batched deletes of old terminal tasks and resolved dead letters.
"""
