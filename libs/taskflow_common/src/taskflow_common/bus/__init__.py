"""NATS JetStream access: connect, reconcile streams and consumers, publish, pull.

One module per concept, re-exported here (``from taskflow_common.bus import Bus``):

- :mod:`~taskflow_common.bus.connection`: :class:`Bus` and :func:`connect` (connect with
  backoff, the server version check, drain on exit);
- :mod:`~taskflow_common.bus.streams`: the stream and consumer layout and its
  reconciliation (:class:`ConsumerSettings`), and reads of their state;
- :mod:`~taskflow_common.bus.publish`: batches with async PubAcks, single publishes, and
  the workers' core-NATS doorbell (``<prefix>.wake``, rung after each publish batch;
  idle workers also poll);
- :mod:`~taskflow_common.bus.pull`: :class:`Puller`, exact-size ``no_wait`` pulls;
- :mod:`~taskflow_common.bus.transient`: :data:`TRANSIENT_ERRORS`, the nats-py errors
  worth retrying.

A pull that finds its consumer gone raises :class:`~taskflow_common.errors.ConsumerGone`
(re-exported here too).
"""

from __future__ import annotations

from taskflow_common.bus.connection import MIN_SERVER_VERSION, Bus, connect, on_message
from taskflow_common.bus.pull import Puller
from taskflow_common.bus.streams import DUPLICATE_WINDOW_S, ConsumerSettings
from taskflow_common.bus.transient import TRANSIENT_ERRORS
from taskflow_common.errors import ConsumerGone

__all__ = [
    "DUPLICATE_WINDOW_S",
    "MIN_SERVER_VERSION",
    "TRANSIENT_ERRORS",
    "Bus",
    "ConsumerGone",
    "ConsumerSettings",
    "Puller",
    "connect",
    "on_message",
]
