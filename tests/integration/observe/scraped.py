"""A small real run whose /metrics is scraped: the sandbox (with 429s on every API, and values ThreatStream
refuses) and `tibridge run` as processes of their own, the pipeline's /metrics read once everything settled."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.fixtures.runtime import free_port

# Faults that make every API throttle in a run this size (Retry-After 1 s), and a whitelist that makes
# ThreatStream refuse a few published values (dead-lettered by the publisher).
FAULTS = ("graph.p429=0.05", "threatstream.p429=0.15", "loganalytics.p429=0.3")
SETS = ("threatstream_whitelist_share=0.1",)
SETTLED_WITHIN_SECONDS = 240.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


@dataclass(frozen=True)
class Scrape:
    text: str
    content_type: str

    def samples(self) -> list[tuple[str, str, float]]:
        """(metric name, labels as written, value) of every sample."""
        found = []
        for line in self.text.splitlines():
            match = _SAMPLE.match(line)
            if match:
                found.append((match[1], match[2] or "", float(match[3])))
        return found

    def names(self) -> set[str]:
        return {name for name, _, _ in self.samples()}

    def total(self, name: str, label: str = "") -> float:
        return sum(value for found, labels, value in self.samples() if found == name and label in labels)


def _environment(**settings: str) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith(("TIBRIDGE_", "OTEL_"))}
    return environment | settings


@contextlib.contextmanager
def _process(arguments: list[str], environment: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tibridge.cli", *arguments], env=environment, stdout=output, stderr=output
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _settled(scrape: Scrape) -> bool:
    waiting = scrape.total("tibridge_bus_backlog") + scrape.total("tibridge_messages_in_flight")
    return (
        scrape.total("tibridge_collector_passes_total") >= 1
        and scrape.total("tibridge_publisher_settled_total") > 0
        and waiting == 0
    )


def scraped_run(directory: Path, *, indicators: int = 1500) -> Scrape:
    """Runs the pipeline over `indicators` seeded indicators until it settled; returns its /metrics then."""
    env_file = directory / "sandbox.env"
    sandbox_arguments = ["sandbox", "--port", "0", "--env-file", str(env_file), "--indicators", str(indicators)]
    sandbox_arguments += ["--seed", "7", *(part for fault in FAULTS for part in ("--fault", fault))]
    sandbox_arguments += [part for setting in SETS for part in ("--set", setting)]
    with _process(sandbox_arguments, _environment(), directory / "sandbox.log"):
        deadline = time.monotonic() + 60
        while not env_file.exists() or "TIBRIDGE_THREATSTREAM_API_KEY" not in env_file.read_text():
            if time.monotonic() > deadline:
                raise AssertionError(f"the sandbox did not start: {(directory / 'sandbox.log').read_text()[-2000:]}")
            time.sleep(0.2)
        sandbox = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        port = free_port()
        settings = sandbox | {
            "TIBRIDGE_HEALTH_HOST": "127.0.0.1",
            "TIBRIDGE_HEALTH_PORT": str(port),
            "TIBRIDGE_PUBLISHER_MODE": "direct",
            "TIBRIDGE_CHECKPOINT_PATH": str(directory / "checkpoint.json"),
            # Several queries, so Log Analytics' 429s are met too; one pass in this run.
            "TIBRIDGE_COLLECTOR_ROWS_PER_QUERY": "100",
            "TIBRIDGE_COLLECTOR_INTERVAL": "PT1H",
            # Many ThreatStream requests, so its 429s are met too.
            "TIBRIDGE_PUBLISHER_BATCH_SIZE": "20",
            "TIBRIDGE_PUBLISHER_BATCH_AGE_SECONDS": "1",
        }
        with _process(["run"], _environment(**settings), directory / "run.log"):
            return _scrape_once_settled(f"http://127.0.0.1:{port}/metrics", directory / "run.log")


def _scrape_once_settled(url: str, log: Path) -> Scrape:
    deadline = time.monotonic() + SETTLED_WITHIN_SECONDS
    settled_in_a_row = 0
    last: Scrape | None = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=5)
            last = Scrape(response.text, response.headers.get("content-type", ""))
        except httpx.TransportError:
            last = None
        settled_in_a_row = settled_in_a_row + 1 if last is not None and _settled(last) else 0
        if last is not None and settled_in_a_row >= 3:
            return last
        time.sleep(1.0)
    raise AssertionError(f"the run did not settle within {SETTLED_WITHIN_SECONDS:.0f} s: {log.read_text()[-3000:]}")
