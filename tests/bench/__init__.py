"""The benchmark harness of issue 5 (``make bench``).

``python -m tests.bench`` starts the stack (embedded Postgres and NATS unless
``DATABASE_URL``/``NATS_URL`` are given), runs the burst, batch burst, drain, paced
latency, cost, scale and worker-memory scenarios ``BENCH_RUNS`` times with
``BENCH_N`` tasks, prints a table and writes ``.bench/latest.json``. Modules:
``loadgen`` (HTTP load generator and no-op server), ``stack`` (servers, database,
services), ``probes`` (counters read from outside), ``scenarios``, ``cost`` (per-task
cost figures), ``report``, ``profile`` (py-spy), ``harness`` (the order of things).
"""
