"""The all-in-one composition: every registered service in one process on one bus.

`tibridge run` uses it on the in-memory bus (the embedded default) or on Service Bus; `tibridge demo` uses
it against the sandbox. Each service is built by its own package's `build`; nothing here knows their insides.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tibridge.cli.registry import SERVICES
from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.consumer import Consumer
from tibridge.common.logging import register_settings_secrets
from tibridge.common.runtime import Service, ServiceName
from tibridge.common.settings import ServiceSettings, SettingsError, load_settings
from tibridge.common.topology import TOPOLOGY

S = TypeVar("S", bound=ServiceSettings)


@dataclass(frozen=True)
class PipelineSettings:
    services: Mapping[ServiceName, ServiceSettings]

    @property
    def process(self) -> ServiceSettings:
        """Bus, health and shutdown settings of the one process (every service's class has the same)."""
        return next(iter(self.services.values()))

    def of(self, kind: type[S]) -> S:
        """The settings of the one service whose settings class is `kind`."""
        [found] = [settings for settings in self.services.values() if isinstance(settings, kind)]
        return found


def load_pipeline_settings(values: Mapping[str, Any] | None = None) -> PipelineSettings:
    """Every service's settings from one environment; raises SettingsError listing every problem once."""
    loaded: dict[ServiceName, ServiceSettings] = {}
    problems: list[str] = []
    for name, spec in SERVICES.items():
        try:
            loaded[name] = load_settings(spec.settings, **(values or {}))
        except SettingsError as error:
            problems += [problem for problem in error.problems if problem not in problems]
    if problems:
        raise SettingsError(problems)
    # The process is served with one service's settings; the others' secrets must be masked in logs too.
    for service_settings in loaded.values():
        register_settings_secrets(service_settings)
    return PipelineSettings(loaded)


async def build_pipeline(
    settings: PipelineSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock
) -> dict[ServiceName, Service]:
    return {name: await spec.build(settings.services[name], bus, resources, clock) for name, spec in SERVICES.items()}


async def is_idle(bus: Bus, services: Mapping[ServiceName, Service]) -> bool:
    """No consumer holds a message (a batch being gathered counts as held) and nothing waits on any subscription."""
    consumers = [w for service in services.values() for w in service.workers if isinstance(w, Consumer)]
    if any(consumer.in_flight for consumer in consumers):
        return False
    # Upstream first: a consumer publishes its output before it completes its input, so work moving between
    # topics is always visible on one of them.
    for topic in TOPOLOGY.topics:
        for sub in topic.subscriptions:
            if await bus.has_pending(topic.name, sub.name):
                return False
    return True


async def stop_when_drained(
    bus: Bus, services: Mapping[ServiceName, Service], collector_done: asyncio.Event, stop: asyncio.Event
) -> None:
    """For one-shot runs: once the collector finished and everything downstream settled, stop the process."""
    await collector_done.wait()
    while not stop.is_set():
        if await is_idle(bus, services):
            stop.set()
            return
        await asyncio.sleep(0.2)
