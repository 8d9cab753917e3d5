"""What the `tibridge` commands do: wire settings to a bus and the services' builders, then serve."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from tibridge.cli.pipeline import SERVICE_SETTINGS, build_pipeline, load_pipeline_settings, stop_when_drained
from tibridge.common.clock import SystemClock
from tibridge.common.runtime import Service, Worker, bus_from_settings, run_service, serve
from tibridge.common.settings import SettingsError, load_settings


def _collector_overrides(once: bool, since: str | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {"collector_mode": "once" if once else "loop"}
    if since is not None:
        overrides["collector_since"] = since
    return overrides


async def run_one_service(name: str, *, once: bool = False, since: str | None = None) -> int:
    if name == "collector":
        from tibridge.collector.app import build as build_collector
        from tibridge.collector.settings import CollectorSettings

        return await run_service(load_settings(CollectorSettings, **_collector_overrides(once, since)), build_collector)
    if name == "scorer":
        from tibridge.scorer.app import build as build_scorer
        from tibridge.scorer.settings import ScorerSettings

        return await run_service(load_settings(ScorerSettings), build_scorer)
    from tibridge.publisher.app import build as build_publisher
    from tibridge.publisher.settings import PublisherSettings

    return await run_service(load_settings(PublisherSettings), build_publisher)


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
    bus: str,
    once: bool,
    since: str | None,
    overrides: dict[str, Any] | None = None,
    on_built: Callable[[dict[str, Service]], None] | None = None,
) -> int:
    """All three services in one process; `on_built` sees them before they start (the demo watches counts)."""
    settings = load_pipeline_settings({"bus": bus, **_collector_overrides(once, since), **(overrides or {})})
    stop = asyncio.Event()
    collector_done = asyncio.Event()
    async with contextlib.AsyncExitStack() as resources:
        the_bus = await bus_from_settings(settings.process, resources)
        services = await build_pipeline(settings, the_bus, resources, SystemClock())
        if on_built is not None:
            on_built(services)
        if once:
            collector = services["collector"]
            services["collector"] = Service(
                workers=[_Signalling(w, collector_done) for w in collector.workers],
                readiness=collector.readiness,
                counts=collector.counts,
            )
            resources.push_async_callback(
                _cancel, asyncio.create_task(stop_when_drained(the_bus, services, collector_done, stop))
            )
        return await serve(settings.process, the_bus, list(services.values()), stop=stop)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def check_settings(services: list[str], *, bus: str | None) -> dict[str, list[str]]:
    """Per service, the problems with its settings (empty when fine)."""
    overrides = {"bus": bus} if bus else {}
    problems: dict[str, list[str]] = {}
    for name in services:
        try:
            load_settings(SERVICE_SETTINGS[name], **overrides)
            problems[name] = []
        except SettingsError as error:
            problems[name] = error.problems
    return problems
