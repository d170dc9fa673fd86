"""All SQL against the task tables lives in this package, one module per concern.

- :mod:`.rows`: row shapes and their JSON form;
- :mod:`.tasks`: submit, read, list, cancel, retry (the ingest API's side);
- :mod:`.outbox`: due tasks and dead letters to publish, lease reaping (the dispatcher);
- :mod:`.claims`: claim a task for an attempt, diagnose a refusal, adopt (the worker);
- :mod:`.attempts`: finish an attempt, renew leases, abandon lost ones (the worker, the
  dispatcher's reaper);
- :mod:`.deadletters`: the dead-letter record (the dlq-monitor).
"""
