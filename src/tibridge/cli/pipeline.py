"""The all-in-one composition: every registered service in one process on one bus.

`tibridge run` uses it on the in-memory bus (the embedded default) or on Service Bus; `tibridge demo` uses
it against the sandbox. Each service is built by its own package's `build`; nothing here knows their insides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from tibridge.cli.registry import SERVICES
from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.consumer import Consumer
from tibridge.common.logging import register_settings_secrets
from tibridge.common.runtime import Service, ServiceName, readiness_checks, readiness_problems
from tibridge.common.settings import ServiceSettings, SettingsError, load_settings
from tibridge.common.topology import TOPOLOGY

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ServiceSettings)
# Whether a consumer holds a message is looked at often (it costs nothing); the bus is asked whether anything
# waits only once none does, at once the first time (the run ends as soon as it drained) and at most every
# BUS_IDLE_POLL_SECONDS after (a peek per subscription on Service Bus).
IDLE_POLL_SECONDS = 0.05
BUS_IDLE_POLL_SECONDS = 0.2
# Readiness asks the bus too (a peek on Service Bus): less often than idleness.
READINESS_POLL_SECONDS = 1.0


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


def holding(services: Mapping[ServiceName, Service]) -> bool:
    """Whether a consumer holds a message (a batch being gathered counts as held)."""
    consumers = [w for service in services.values() for w in service.workers if isinstance(w, Consumer)]
    return any(consumer.in_flight for consumer in consumers)


async def is_idle(bus: Bus, services: Mapping[ServiceName, Service]) -> bool:
    """No consumer holds a message and nothing waits on any subscription."""
    if holding(services):
        return False
    # Upstream first: a consumer publishes its output before it completes its input, so work moving between
    # topics is always visible on one of them.
    for topic in TOPOLOGY.topics:
        for sub in topic.subscriptions:
            if await bus.has_pending(topic.name, sub.name):
                return False
    return True


@dataclass
class OneShotEnd:
    """How a one-shot run ended: drained, or given up on because a dependency kept refusing us."""

    refused: str | None = None


async def stop_when_done(
    bus: Bus,
    services: Mapping[ServiceName, Service],
    collector_done: asyncio.Event,
    stop: asyncio.Event,
    *,
    refused_seconds: float,
    end: OneShotEnd,
) -> None:
    """For one-shot runs: stop the process once the collector finished and everything downstream settled — or
    once the services have not been ready (a dependency refusing us, a paused consumer) for `refused_seconds`
    on end, saying why in `end.refused`. Watched from the start: the collector may be what waits."""
    loop = asyncio.get_running_loop()
    checks = readiness_checks(list(services.values()))
    unready_since: float | None = None
    next_check = loop.time()
    next_bus_look = loop.time()
    while not stop.is_set():
        now = loop.time()
        if now >= next_check:
            next_check = now + READINESS_POLL_SECONDS
            problems = await readiness_problems(bus, checks)
            if not problems:
                unready_since = None
            elif unready_since is None:
                unready_since = now
            elif now - unready_since >= refused_seconds:
                end.refused = "; ".join(problems)
                log.error(
                    "giving up the one-shot run: not ready for %.0f s (TIBRIDGE_ONCE_REFUSED_SECONDS) because %s; "
                    "fix that and run again — what this run did not deliver is left for the next one",
                    now - unready_since,
                    end.refused,
                )
                stop.set()
                return
        if not collector_done.is_set() or holding(services):
            next_bus_look = now
        elif now >= next_bus_look:
            next_bus_look = now + BUS_IDLE_POLL_SECONDS
            if await is_idle(bus, services):
                stop.set()
                return
        await asyncio.sleep(IDLE_POLL_SECONDS)
