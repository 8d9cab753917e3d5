"""A sandbox in a child process with a rate ceiling on one API, for the ceiling benchmarks
(`bench.graph_ceiling`, `bench.threatstream_ceiling`)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Sandbox:
    process: asyncio.subprocess.Process
    base_url: str

    async def stats(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as control:
            response = await control.get("/_sandbox/stats")
            response.raise_for_status()
            stats: dict[str, Any] = response.json()
            return stats


@contextlib.asynccontextmanager
async def sandbox(api: str, ceiling: float, latency_ms: float) -> AsyncIterator[Sandbox]:
    """An empty sandbox whose `api` answers 429 past `ceiling` requests (Graph: lookups) per second."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tibridge.sandbox",
        "--port",
        "0",
        "--indicators",
        "0",
        "--fault",
        f"{api}.rate_ceiling={ceiling}",
        "--fault",
        f"{api}.latency_ms={latency_ms}",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        base_url = next(word for word in line.split() if word.startswith("http://127.0.0.1"))
        yield Sandbox(process, base_url.rstrip("/"))
    finally:
        process.terminate()
        await process.wait()
