"""Service start and stop: settings, logging, tracing, signals, exit codes.

``run_service`` is what every service's ``__main__`` calls. Exit codes: 0 after a clean
stop (SIGTERM/SIGINT), 2 for bad configuration (naming the variable), 1 when the
service cannot start (e.g. NATS too old, a consumer that cannot be reconciled).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from taskflow_common import logs, tracing
from taskflow_common.config import CommonSettings, load
from taskflow_common.errors import ConfigError, TaskFlowError

S = TypeVar("S", bound=CommonSettings)

log = logs.get_logger(__name__)

ServiceMain = Callable[[S, asyncio.Event], Awaitable[None]]


def ready(**fields: object) -> None:
    """Log ``service_ready`` (tests and supervisors wait for this line)."""
    log.info("service_ready", **fields)


def run_service(service: str, settings_cls: type[S], main: ServiceMain[S]) -> int:
    """Load ``settings_cls`` from the environment and run ``main(settings, stop)``.

    ``stop`` is set on SIGTERM or SIGINT; ``main`` should then finish its work within
    its grace period and return. Returns the process exit code.
    """
    try:
        settings = load(settings_cls)
    except ConfigError as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    logs.setup(service, settings.log_level)
    log.info("service_starting", settings=settings.describe())

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, stop, sig)
        await main(settings, stop)

    with tracing.setup(service, settings):
        try:
            _event_loop_runner()(_main())
        except ConfigError as exc:
            print(f"{service}: {exc}", file=sys.stderr)
            return 2
        except TaskFlowError as exc:
            log.error("service_failed", error=f"{exc.__class__.__name__}: {exc}")
            print(f"{service}: {exc}", file=sys.stderr)
            return 1
    log.info("service_stopped")
    return 0


async def wait_any(stop: asyncio.Event, wake: asyncio.Event | None, timeout_s: float) -> None:
    """Return when ``stop`` or ``wake`` is set, or after ``timeout_s`` seconds."""
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    try:
        await asyncio.wait(
            waiters, timeout=max(timeout_s, 0.0), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for w in waiters:
            w.cancel()


def _on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    log.info("shutdown_requested", signal=sig.name)
    stop.set()


def _event_loop_runner() -> Callable[[Awaitable[None]], None]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return lambda coro: asyncio.run(coro)  # type: ignore[arg-type]
    return lambda coro: uvloop.run(coro)  # type: ignore[arg-type]
