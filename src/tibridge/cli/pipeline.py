"""The all-in-one composition: the three services in one process on one bus.

`tibridge run` uses it on the in-memory bus (the embedded default) or on Service Bus; `tibridge demo` uses
it against the sandbox. Each service is built by its own package's `build`; nothing here knows their insides.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tibridge.collector.app import build as build_collector
from tibridge.collector.settings import CollectorSettings
from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.consumer import Consumer
from tibridge.common.logging import register_settings_secrets
from tibridge.common.runtime import Service
from tibridge.common.settings import ServiceSettings, load_settings
from tibridge.common.topology import TOPOLOGY
from tibridge.publisher.app import build as build_publisher
from tibridge.publisher.settings import PublisherSettings
from tibridge.scorer.app import build as build_scorer
from tibridge.scorer.settings import ScorerSettings

SERVICE_SETTINGS: dict[str, type[ServiceSettings]] = {
    "collector": CollectorSettings,
    "scorer": ScorerSettings,
    "publisher": PublisherSettings,
}


@dataclass(frozen=True)
class PipelineSettings:
    collector: CollectorSettings
    scorer: ScorerSettings
    publisher: PublisherSettings

    @property
    def process(self) -> ServiceSettings:
        """Bus, health and shutdown settings of the one process (all three classes share them)."""
        return self.collector


def load_pipeline_settings(overrides: Mapping[str, Any] | None = None) -> PipelineSettings:
    """Loads the three services' settings from one environment; raises SettingsError listing every problem."""
    values = dict(overrides or {})
    settings = PipelineSettings(
        collector=load_settings(CollectorSettings, **values),
        scorer=load_settings(ScorerSettings, **values),
        publisher=load_settings(PublisherSettings, **values),
    )
    # The process is served with the collector's settings; the others' secrets must be masked in logs too.
    for service_settings in (settings.collector, settings.scorer, settings.publisher):
        register_settings_secrets(service_settings)
    return settings


async def build_pipeline(
    settings: PipelineSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock
) -> dict[str, Service]:
    builders: dict[str, Callable[[], Awaitable[Service]]] = {
        "collector": lambda: build_collector(settings.collector, bus, resources, clock),
        "scorer": lambda: build_scorer(settings.scorer, bus, resources, clock),
        "publisher": lambda: build_publisher(settings.publisher, bus, resources, clock),
    }
    return {stage: await builder() for stage, builder in builders.items()}


async def is_idle(bus: Bus, services: Mapping[str, Service]) -> bool:
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
    bus: Bus, services: Mapping[str, Service], collector_done: asyncio.Event, stop: asyncio.Event
) -> None:
    """For one-shot runs: once the collector finished and everything downstream settled, stop the process."""
    await collector_done.wait()
    while not stop.is_set():
        if await is_idle(bus, services):
            stop.set()
            return
        await asyncio.sleep(0.2)
