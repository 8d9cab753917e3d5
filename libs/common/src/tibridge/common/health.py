"""The health endpoints orchestrators probe: `/healthz` (the process is alive) and `/readyz` (it can work), and
`/metrics`, the process's metrics for Prometheus to scrape (see `telemetry.scrape`)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from tibridge.common import telemetry
from tibridge.common.logging import redact
from tibridge.common.web import WebServer

log = logging.getLogger(__name__)

# Every reason the service is not ready right now; empty when it is.
ReadinessProbe = Callable[[], Awaitable[list[str]]]


class HealthServer(WebServer):
    """Serves the probes on host:port; port 0 picks a free port (see `port` once started)."""

    def __init__(self, host: str, port: int, readiness: ReadinessProbe) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._alive)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/metrics", self._metrics)
        self._readiness = readiness
        super().__init__(
            app,
            host,
            port,
            port_hint="set TIBRIDGE_HEALTH_PORT to a free port (0 turns them off) or fix TIBRIDGE_HEALTH_HOST",
            # No access log: probes arrive every few seconds and would drown everything else.
            access_log=None,
            handle_signals=False,
        )

    async def start(self) -> None:
        await super().start()
        log.info("health endpoints on http://%s:%d/healthz, /readyz and /metrics", self._host, self.port)

    async def _alive(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _ready(self, request: web.Request) -> web.Response:
        reasons = [redact(reason) for reason in await self._readiness()]
        if reasons:
            return web.json_response({"status": "not ready", "reasons": reasons}, status=503)
        return web.json_response({"status": "ready"})

    async def _metrics(self, request: web.Request) -> web.Response:
        exposition = telemetry.scrape()
        if exposition is None:
            return web.Response(status=404, text="metrics are off here (TIBRIDGE_HEALTH_METRICS=false)\n")
        return web.Response(body=exposition, headers={"Content-Type": telemetry.PROMETHEUS_CONTENT_TYPE})
