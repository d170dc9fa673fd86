"""All SQL against the task tables lives in this package, one module per concern.

- :mod:`.rows`: row shapes and their JSON form;
- :mod:`.tasks`: submit, read, list, cancel, retry (the ingest API's side);
- :mod:`.outbox`: due tasks and dead letters to publish, lease reaping (the dispatcher);
- :mod:`.attempts`: claim, finish, renew (the worker);
- :mod:`.deadletters`: the dead-letter record (the dlq-monitor).
"""
