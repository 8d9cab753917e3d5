"""The Service Bus the settings name, over the wire-level double: reachable, serving, and ready."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from tests.fixtures.runtime import free_port
from tests.sbdouble import ServiceBusDouble
from tibridge.common import runtime
from tibridge.common.bus.servicebus import ServiceBusBus
from tibridge.common.runtime import Service, bus_from_settings, serve
from tibridge.common.settings import ServiceSettings, load_settings


class Idle:
    name = "idle"

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()


async def test_readyz_follows_service_bus_reachability(
    sb_double: ServiceBusDouble, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refused connection makes the SDK retry; the readiness deadline is what answers the probe then.
    monkeypatch.setattr(runtime, "READINESS_TIMEOUT_SECONDS", 1.0)
    port = free_port()
    settings = load_settings(
        ServiceSettings,
        bus="servicebus",
        servicebus_connection_string=sb_double.connection_string,
        health_host="127.0.0.1",
        health_port=port,
    )
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as resources, httpx.AsyncClient(timeout=30) as client:
        bus = await bus_from_settings(settings, resources)
        assert isinstance(bus, ServiceBusBus)
        serving = asyncio.create_task(serve(settings, bus, [Service([Idle()])], stop=stop))
        statuses: list[int] = []
        reasons: list[str] = []

        async def poll_ready() -> None:
            with contextlib.suppress(httpx.TransportError):
                response = await client.get(f"http://127.0.0.1:{port}/readyz")
                statuses.append(response.status_code)
                reasons.extend(response.json().get("reasons", []))

        try:
            while not statuses:
                await poll_ready()
                await asyncio.sleep(0.05)
            assert statuses[-1] == 200

            sb_double.drop_connections()
            sb_double.refuse_connections()
            await poll_ready()
            assert statuses[-1] == 503
            assert any("bus" in reason for reason in reasons), reasons

            sb_double.refuse_connections(False)
            for _ in range(50):
                await poll_ready()
                if statuses[-1] == 200:
                    break
                await asyncio.sleep(0.1)
            assert statuses[-1] == 200
        finally:
            stop.set()
            assert await asyncio.wait_for(serving, 30) == 0
