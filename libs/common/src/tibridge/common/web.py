"""A small aiohttp site runner shared by the health endpoints and the sandbox."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self

from aiohttp import web


class WebServer:
    """Serves `app` on host:port until stopped; port 0 picks a free port (see `port` once started)."""

    def __init__(self, app: web.Application, host: str, port: int, *, port_hint: str, **runner_options: Any) -> None:
        self._app = app
        self._host = host
        self._requested_port = port
        self._port_hint = port_hint
        self._runner_options = runner_options
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        runner = web.AppRunner(self._app, **self._runner_options)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._requested_port).start()
        except OSError as error:
            await runner.cleanup()
            raise OSError(
                f"cannot listen on {self._host}:{self._requested_port} ({error.strerror}); {self._port_hint}"
            ) from None
        self._runner = runner
        self.port = _bound_port(runner, self._requested_port)

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


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
            return address[1]
    return requested
