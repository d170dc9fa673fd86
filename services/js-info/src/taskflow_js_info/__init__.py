"""TaskFlow js-info: a read-only CLI showing TaskFlow's JetStream streams and consumers."""

__version__ = "0.1.0"
