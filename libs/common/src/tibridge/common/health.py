"""The health endpoints orchestrators probe: `/healthz` (the process is alive) and `/readyz` (it can work)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from aiohttp import web

from tibridge.common.logging import redact

log = logging.getLogger(__name__)

# Every reason the service is not ready right now; empty when it is.
ReadinessProbe = Callable[[], Awaitable[list[str]]]


class HealthServer:
    """Serves the probes on host:port; port 0 picks a free port (see `port` once started)."""

    def __init__(self, host: str, port: int, readiness: ReadinessProbe) -> None:
        self._host = host
        self._requested_port = port
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._alive)
        app.router.add_get("/readyz", self._ready)
        # No access log: probes arrive every few seconds and would drown everything else.
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise OSError(
                f"cannot serve /healthz and /readyz on {self._host}:{self._requested_port} ({error.strerror}); "
                "set TIBRIDGE_HEALTH_PORT to a free port (0 turns them off) or fix TIBRIDGE_HEALTH_HOST"
            ) from error
        self._runner = runner
        self.port = _bound_port(runner, self._requested_port)
        log.info("health endpoints on http://%s:%d/healthz and /readyz", self._host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def _alive(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _ready(self, request: web.Request) -> web.Response:
        reasons = [redact(reason) for reason in await self._readiness()]
        if reasons:
            return web.json_response({"status": "not ready", "reasons": reasons}, status=503)
        return web.json_response({"status": "ready"})


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
            return address[1]
    return requested
