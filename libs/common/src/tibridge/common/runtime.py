"""What a service is to the runtime: workers to run until stopped, and readiness checks.

Each service package exposes `async def build(settings, bus, resources, clock) -> Service`; a process
(one service over Service Bus, or all three on the in-memory bus) loads settings, makes the bus, calls the
builders and serves the workers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Worker(Protocol):
    @property
    def name(self) -> str: ...

    async def run(self, stop: asyncio.Event) -> None:
        """Works until `stop` is set (or, for a one-shot worker, until its work is done)."""
        ...


# None when ready; otherwise the reason, one sentence saying what is wrong.
ReadinessCheck = Callable[[], Awaitable[str | None]]


def _no_counts() -> dict[str, Any]:
    return {}


@dataclass
class Service:
    workers: list[Worker]
    readiness: list[ReadinessCheck] = field(default_factory=list)
    # What the service has done so far (JSON-able counters), for the demo summary and logs at exit.
    counts: Callable[[], dict[str, Any]] = _no_counts
