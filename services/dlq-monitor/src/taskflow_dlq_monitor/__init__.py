"""TaskFlow dlq-monitor: records dead letters from ``<prefix>.dlq`` and serves the DLQ API."""

__version__ = "0.1.0"
