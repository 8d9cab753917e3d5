"""What the `tibridge` commands do: wire settings to a bus and the services' builders, then serve."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tibridge.cli.pipeline import OneShotEnd, build_pipeline, load_pipeline_settings, stop_when_done
from tibridge.cli.registry import SERVICES
from tibridge.common.bus.port import Bus
from tibridge.common.clock import SystemClock
from tibridge.common.runtime import (
    EXIT_DEPENDENCY_REFUSED,
    Service,
    ServiceName,
    Worker,
    bus_from_settings,
    configure_observability,
    run_service,
    serve,
)
from tibridge.common.settings import ENV_PREFIX, BusKind, SettingsError, load_settings, setting_fields

ALL_IN_ONE = "tibridge"


def _collector_values(once: bool, since: str | None) -> dict[str, Any]:
    values: dict[str, Any] = {"collector_mode": "once" if once else "loop"}
    if since is not None:
        values["collector_since"] = since
    return values


async def run_one_service(name: ServiceName, *, once: bool = False, since: str | None = None) -> int:
    values = _collector_values(once, since) if name is ServiceName.COLLECTOR else {}
    return await run_service(SERVICES[name], **values)


class _Signalling:
    """Wraps a one-shot worker so the process knows when it has finished."""

    def __init__(self, worker: Worker, done: asyncio.Event) -> None:
        self._worker = worker
        self._done = done

    @property
    def name(self) -> str:
        return self._worker.name

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._worker.run(stop)
        finally:
            self._done.set()


async def run_pipeline(
    *,
    bus: BusKind,
    once: bool,
    since: str | None,
    values: Mapping[str, Any] | None = None,
    on_built: Callable[[Mapping[ServiceName, Service]], None] | None = None,
    on_bus: Callable[[Bus], None] | None = None,
) -> int:
    """All services in one process; `on_built` sees them before they start (the demo watches their counts),
    `on_bus` sees the bus (tests read the in-memory bus's dead-letter queues after the run).

    With `once`, the process stops when the collector's pass is done and everything downstream settled, or gives
    up with EXIT_DEPENDENCY_REFUSED once it has not been ready for TIBRIDGE_ONCE_REFUSED_SECONDS."""
    settings = load_pipeline_settings({"bus": bus, **_collector_values(once, since), **(values or {})})
    configure_observability(settings.process, ALL_IN_ONE)
    stop = asyncio.Event()
    collector_done = asyncio.Event()
    end = OneShotEnd()
    async with contextlib.AsyncExitStack() as resources:
        the_bus = await bus_from_settings(settings.process, resources)
        if on_bus is not None:
            on_bus(the_bus)
        services = await build_pipeline(settings, the_bus, resources, SystemClock())
        if on_built is not None:
            on_built(services)
        if once:
            collector = services[ServiceName.COLLECTOR]
            services[ServiceName.COLLECTOR] = Service(
                workers=[_Signalling(w, collector_done) for w in collector.workers],
                readiness=collector.readiness,
                counts=collector.counts,
            )
            watcher = stop_when_done(
                the_bus,
                services,
                collector_done,
                stop,
                refused_seconds=settings.process.once_refused_seconds,
                end=end,
            )
            resources.push_async_callback(_cancel, asyncio.create_task(watcher))
        code = await serve(settings.process, the_bus, list(services.values()), stop=stop, name=ALL_IN_ONE)
    return EXIT_DEPENDENCY_REFUSED if end.refused is not None and code == 0 else code


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def check_settings(services: Sequence[ServiceName], *, bus: BusKind | None) -> dict[ServiceName, list[str]]:
    """Per service, the problems with its settings (empty when fine)."""
    values = {"bus": bus} if bus else {}
    problems: dict[ServiceName, list[str]] = {}
    for name in services:
        try:
            load_settings(SERVICES[name].settings, **values)
            problems[name] = []
        except SettingsError as error:
            problems[name] = error.problems
    return problems


def unknown_settings(environment: Mapping[str, str]) -> list[str]:
    """A line for each TIBRIDGE_* variable that no service reads (a misspelt or renamed setting)."""
    known = {env for spec in SERVICES.values() for env, _ in setting_fields(spec.settings)}
    return [
        f"{name} is not a setting of any service; `tibridge config docs` lists them"
        for name in sorted(environment)
        if name.startswith(ENV_PREFIX) and name not in known
    ]
