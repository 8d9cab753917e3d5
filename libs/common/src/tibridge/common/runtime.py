"""The process runtime: what a service is to it (workers, readiness checks, counts) and how a process serves them.

Each service package exports `SPEC = ServiceSpec(name, settings class, build)` from its `app.py`, where
`async def build(settings, bus, resources, clock) -> Service` wires settings to adapters to its workers. A
process loads settings, makes the bus, calls the builders and serves the workers: `main(SPEC)` (or
`run_service(SPEC)` inside an event loop) does all of it for one service — a service's package is enough
to run it — and `serve` runs already-built services (the all-in-one composition uses it directly).

On SIGTERM or SIGINT the process stops receiving; in-flight work gets `shutdown_grace_seconds` to finish
and what is left is abandoned for redelivery; then clients and the bus close and the exit code is 0. A
worker that crashes stops the others the same way and makes the exit code 1 (2, with one sentence instead of a
traceback, for a worker that refuses to go on: `WorkerRefused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from azure.core.credentials_async import AsyncTokenCredential

from tibridge.common import logging as structured_logging
from tibridge.common import telemetry
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import Bus, BusError
from tibridge.common.clock import Clock, SystemClock
from tibridge.common.identity import build_credential
from tibridge.common.metrics import Snapshot
from tibridge.common.settings import BusKind, ServiceSettings, SettingsError, load_settings

log = logging.getLogger(__name__)

# Beyond the grace period, time for workers to abandon what they still hold and close their receivers;
# the orchestrator's own deadline (k8s terminationGracePeriodSeconds) should cover both.
SETTLE_ALLOWANCE_SECONDS = 10.0
READINESS_TIMEOUT_SECONDS = 5.0
EXIT_OK = 0
EXIT_WORKER_CRASHED = 1
EXIT_BAD_SETTINGS = 2
# A one-shot run gave up because a dependency kept refusing us (TIBRIDGE_ONCE_REFUSED_SECONDS).
EXIT_DEPENDENCY_REFUSED = 3
EXIT_INTERRUPTED = 130


class WorkerRefused(Exception):
    """A worker declining to go on for a reason its operator must settle; the message is one sentence naming the
    setting. The process stops as for a crash, but with that sentence instead of a traceback, and exit code 2."""


class ServiceName(StrEnum):
    COLLECTOR = "collector"
    SCORER = "scorer"
    PUBLISHER = "publisher"


class Worker(Protocol):
    @property
    def name(self) -> str: ...

    async def run(self, stop: asyncio.Event) -> None:
        """Works until `stop` is set (or, for a one-shot worker, until its work is done)."""
        ...


# None when ready; otherwise the reason, one sentence saying what is wrong.
ReadinessCheck = Callable[[], Awaitable[str | None]]


CountsT = TypeVar("CountsT", bound=Snapshot)


@dataclass
class Service:
    workers: list[Worker]
    readiness: list[ReadinessCheck] = field(default_factory=list)
    # What the service has done so far, for the demo, the bench and the log line at exit.
    counts: Callable[[], Snapshot] = Snapshot

    def snapshot(self, kind: type[CountsT]) -> CountsT:
        """The counts as the type the service's package declares for them."""
        counts = self.counts()
        if not isinstance(counts, kind):
            raise TypeError(f"the service counts {type(counts).__name__}, not {kind.__name__}")
        return counts


@runtime_checkable
class Pausable(Protocol):
    """A worker that can pause itself (a Consumer whose dependency refuses us); paused means not ready."""

    @property
    def name(self) -> str: ...

    @property
    def paused_reason(self) -> str | None: ...


def not_paused(worker: Pausable) -> ReadinessCheck:
    async def worker_not_paused() -> str | None:
        reason = worker.paused_reason
        return None if reason is None else f"{worker.name} is paused: {reason}"

    return worker_not_paused


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)
Build = Callable[[SettingsT, Bus, contextlib.AsyncExitStack, Clock], Awaitable[Service]]


@dataclass(frozen=True)
class ServiceSpec(Generic[SettingsT]):
    """What a process needs to know to run a service: its name, its settings class and its builder."""

    name: ServiceName
    settings: type[SettingsT]
    build: Build[SettingsT]

    @property
    def process_name(self) -> str:
        """The name logs, traces and metrics carry (`tibridge-scorer`)."""
        return f"tibridge-{self.name}"


async def bus_from_settings(
    settings: ServiceSettings,
    resources: contextlib.AsyncExitStack,
    *,
    credential: AsyncTokenCredential | None = None,
) -> Bus:
    """The bus the settings ask for, closed with `resources`.

    Service Bus by connection string, or by namespace with `credential` (default: the one
    TIBRIDGE_CREDENTIAL names, closed with `resources` too).
    """
    if settings.bus is BusKind.MEMORY:
        memory = MemoryBus()
        resources.push_async_callback(memory.close)
        return memory
    # Imported here so processes on the memory bus never load the AMQP stack.
    from tibridge.common.bus.servicebus import ServiceBusBus

    if settings.servicebus.connection_string is not None:
        bus = ServiceBusBus.from_connection_string(settings.servicebus.connection_string)
    else:
        namespace = settings.servicebus.namespace or ""
        if credential is None:
            credential = build_credential(settings.credential, f"sb://{namespace}")
            resources.push_async_callback(credential.close)
        bus = ServiceBusBus.from_namespace(namespace, credential)
    resources.push_async_callback(bus.close)
    return bus


def main(spec: ServiceSpec[Any], **values: Any) -> int:
    """A service's whole process (its package's `__main__`): the exit code of `run_service(spec, **values)`."""
    return exit_code(lambda: run_service(spec, **values))


def exit_code(process: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Runs a process's coroutine to its exit code; bad settings print one line per problem on stderr and give 2,
    never a traceback."""
    try:
        return asyncio.run(process())
    except SettingsError as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def run_service(spec: ServiceSpec[SettingsT], **values: Any) -> int:
    """Runs one service as a process: settings (`values` by setting name over the environment), observability,
    the bus, its resources, its workers; returns the exit code."""
    settings = load_settings(spec.settings, **values)
    configure_observability(settings, spec.process_name)
    async with contextlib.AsyncExitStack() as resources:
        bus = await bus_from_settings(settings, resources)
        service = await spec.build(settings, bus, resources, SystemClock())
        return await serve(settings, bus, [service], name=spec.process_name)


def configure_observability(settings: ServiceSettings, name: str) -> None:
    """Logs, traces and metrics of a process named `name`: once per process, before anything is built."""
    structured_logging.configure(settings.log_level)
    structured_logging.register_settings_secrets(settings)
    structured_logging.register_environment_secrets(os.environ)
    telemetry.configure(name, prometheus=settings.health.port != 0 and settings.health.metrics)


async def serve(
    settings: ServiceSettings,
    bus: Bus,
    services: Sequence[Service],
    *,
    stop: asyncio.Event | None = None,
    name: str = "tibridge",
) -> int:
    """Runs every worker until `stop` is set (SIGTERM and SIGINT set it) or all have returned.

    Serves /healthz and /readyz meanwhile (unless TIBRIDGE_HEALTH_PORT=0). The caller owns `bus` and
    whatever the services hold, and closes them after this returns (as `run_service` does), and has configured
    observability (`configure_observability`). Returns 0, 1 when a worker crashed, or 2 when one refused.
    """
    stop = stop or asyncio.Event()
    workers = [worker for service in services for worker in service.workers]
    checks = readiness_checks(services)

    async def readiness() -> list[str]:
        return await readiness_problems(bus, checks, stopping=stop.is_set())

    log.info("%s starting: %s", name, ", ".join(worker.name for worker in workers))
    async with _health_server(settings, readiness):
        with _stop_on_signals(stop, settings.shutdown_grace_seconds):
            code = await _run_workers(workers, stop, settings.shutdown_grace_seconds + SETTLE_ALLOWANCE_SECONDS)
    for service in services:
        log.info("%s stopped", name, extra={"counts": service.counts().as_json()})
    telemetry.flush()
    return code


def readiness_checks(services: Sequence[Service]) -> list[ReadinessCheck]:
    """Every check that decides whether these services are ready: their own, and no worker paused."""
    checks = [check for service in services for check in service.readiness]
    workers = [worker for service in services for worker in service.workers]
    return checks + [not_paused(worker) for worker in workers if isinstance(worker, Pausable)]


async def readiness_problems(bus: Bus, checks: Sequence[ReadinessCheck], *, stopping: bool = False) -> list[str]:
    """Every reason the process is not ready: stopping, the bus unreachable, a failing check."""
    if stopping:
        return ["the service is stopping"]

    async def bus_reachable() -> str | None:
        try:
            await bus.check()
        except BusError as error:
            return str(error)
        return None

    results = await asyncio.gather(*(_bounded(check) for check in [bus_reachable, *checks]))
    return [reason for reason in results if reason is not None]


async def _bounded(check: ReadinessCheck) -> str | None:
    try:
        async with asyncio.timeout(READINESS_TIMEOUT_SECONDS):
            return await check()
    except TimeoutError:
        return f"a readiness check ({_describe(check)}) took longer than {READINESS_TIMEOUT_SECONDS:.0f} s"
    except Exception as error:
        log.warning("readiness check %s failed", _describe(check), exc_info=True)
        return f"a readiness check ({_describe(check)}) failed: {type(error).__name__}"


def _describe(check: ReadinessCheck) -> str:
    return getattr(check, "__name__", type(check).__name__)


async def _run_workers(workers: Sequence[Worker], stop: asyncio.Event, deadline_seconds: float) -> int:
    tasks = {asyncio.create_task(worker.run(stop), name=worker.name): worker for worker in workers}
    stopping = asyncio.create_task(_until(stop))
    running = set(tasks)
    code = EXIT_OK
    try:
        while running and not stop.is_set():
            done, running = await asyncio.wait(running | {stopping}, return_when=asyncio.FIRST_COMPLETED)
            running.discard(stopping)
            for task in done - {stopping}:
                if (ended := _ended(task, tasks[task])) != EXIT_OK:
                    code = max(code, ended)
                    stop.set()
        if running:
            done, running = await asyncio.wait(running, timeout=deadline_seconds)
            for task in done:
                code = max(code, _ended(task, tasks[task]))
        if running:
            log.warning(
                "%s did not stop within %.0f s; cancelling (what they still hold comes back when its lock lapses)",
                ", ".join(sorted(tasks[task].name for task in running)),
                deadline_seconds,
            )
    finally:
        for task in [*running, stopping]:
            task.cancel()
        await asyncio.gather(*running, stopping, return_exceptions=True)
    return code


async def _until(event: asyncio.Event) -> None:
    await event.wait()


def _ended(task: asyncio.Task[None], worker: Worker) -> int:
    """The exit code a finished worker asks for."""
    if task.cancelled():
        return EXIT_OK
    error = task.exception()
    if error is None:
        log.info("worker %s finished", worker.name)
        return EXIT_OK
    if isinstance(error, WorkerRefused):
        log.error("worker %s stopped: %s", worker.name, error)
        return EXIT_BAD_SETTINGS
    log.error("worker %s crashed; stopping the service", worker.name, exc_info=error)
    return EXIT_WORKER_CRASHED


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event, grace_seconds: float) -> Iterator[None]:
    loop = asyncio.get_running_loop()

    def request_stop(signal_number: signal.Signals) -> None:
        if stop.is_set():
            log.info("%s received while stopping; still stopping", signal_number.name)
            return
        log.info(
            "%s received: no new messages; in-flight work gets %.0f s to finish, then goes back to the bus",
            signal_number.name,
            grace_seconds,
        )
        stop.set()

    installed: list[signal.Signals] = []
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signal_number, request_stop, signal_number)
            installed.append(signal_number)
        except (NotImplementedError, RuntimeError, ValueError):
            # Not the main thread (or not a Unix loop): whoever runs us is in charge of stopping.
            log.debug("cannot handle %s here; stop comes from the caller", signal_number.name)
    try:
        yield
    finally:
        for signal_number in installed:
            loop.remove_signal_handler(signal_number)


@contextlib.asynccontextmanager
async def _health_server(
    settings: ServiceSettings, readiness: Callable[[], Awaitable[list[str]]]
) -> AsyncIterator[None]:
    if settings.health.port == 0:
        yield
        return
    # Imported here: the web server is the slowest import of a process that starts often (CronJobs, scale-out).
    from tibridge.common.health import HealthServer

    async with HealthServer(settings.health.host, settings.health.port, readiness):
        yield
