"""The sandbox as the benchmark uses it: its own process (so its CPU and memory are not tibridge's), started
fresh for every scenario, and read through its public control API."""

from __future__ import annotations

import re
import shlex
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench.processes import Child, Children

# The latencies of issue 11: Log Analytics 1 s per query, Graph 100 ms and ThreatStream 500 ms per request.
LATENCIES_MS: Mapping[str, int] = {"loganalytics": 1000, "graph": 100, "threatstream": 500}
READY_SECONDS = 1800.0  # generating a million indicators takes minutes on a loaded machine
APPROVAL_WAIT_SECONDS = 120.0  # for ThreatStream to finish processing and approving the sessions
APPROVAL_POLL_SECONDS = 0.5
_LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


@dataclass(frozen=True)
class SandboxOptions:
    indicators: int
    seed: int
    anchor: datetime
    graph_ceiling: float | None = None
    never_seen: str = "404"
    latencies_ms: Mapping[str, int] = field(default_factory=lambda: dict(LATENCIES_MS))

    def arguments(self, env_file: Path) -> list[str]:
        faults = [f"{api}.latency_ms={ms}" for api, ms in self.latencies_ms.items()]
        if self.graph_ceiling is not None:
            faults.append(f"graph.rate_ceiling={self.graph_ceiling}")
        arguments = [
            "-m",
            "tibridge.cli",
            "sandbox",
            "--port",
            "0",
            "--env-file",
            str(env_file),
            "--indicators",
            str(self.indicators),
            "--seed",
            str(self.seed),
            "--anchor",
            self.anchor.strftime("%Y-%m-%dT%H:%M:%S"),
            "--never-seen",
            self.never_seen,
        ]
        for fault in faults:
            arguments += ["--fault", fault]
        return arguments


def _read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, _, value = line.partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


@dataclass
class Sandbox:
    child: Child
    base_url: str
    env: dict[str, str]  # the TIBRIDGE_* settings that point at it
    ready_seconds: float  # from starting it to listening: mostly generating the data
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.base_url, timeout=600)

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/_sandbox/stats")
        return result

    def expected(self, policy: Mapping[str, str]) -> dict[str, Any]:
        """What a correct pipeline with this policy (`expected_policy`) must leave."""
        result: dict[str, Any] = self.get("/_sandbox/expected", **policy)
        return result

    def reconcile(self, policy: Mapping[str, str]) -> list[str]:
        """Every way ThreatStream's contents differ from what a correct run with this policy leaves, as the
        sandbox judges it (the demo's reconciliation asks the same)."""
        problems: list[str] = self.get("/_sandbox/reconcile", **policy)["problems"]
        return problems

    def objects(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/_sandbox/threatstream/objects")["objects"]
        return result

    def without_latency(self) -> None:
        """After the clock stopped: what the harness still asks (approving, reading sessions) need not wait."""
        response = self.client.post("/_sandbox/faults", json={api: {"latency_ms": 0} for api in LATENCIES_MS})
        response.raise_for_status()

    def _threatstream_headers(self) -> dict[str, str]:
        return {
            "Authorization": f"apikey {self.env['TIBRIDGE_THREATSTREAM_USERNAME']}:"
            f"{self.env['TIBRIDGE_THREATSTREAM_API_KEY']}"
        }

    def sessions(self, count: int) -> list[dict[str, Any]]:
        """Import sessions 1…count (the sandbox numbers them in order)."""
        base = self.env["TIBRIDGE_THREATSTREAM_BASE_URL"]
        headers = self._threatstream_headers()
        found = []
        for session_id in range(1, count + 1):
            response = self.client.get(f"{base}/v1/importsession/{session_id}/", headers=headers)
            response.raise_for_status()
            found.append(response.json())
        return found

    def approve_pending(self, count: int) -> int:
        """What an analyst does in ThreatStream's UI, through the API: approves each of the import sessions
        1…count once ThreatStream has finished processing it (`done`), until none is still processing or being
        approved (bounded); how many it approved."""
        base = self.env["TIBRIDGE_THREATSTREAM_BASE_URL"]
        headers = self._threatstream_headers()
        approved: set[int] = set()
        for _round in range(int(APPROVAL_WAIT_SECONDS / APPROVAL_POLL_SECONDS)):
            unfinished = 0
            for session_id in range(1, count + 1):
                status = self.client.get(f"{base}/v1/importsession/{session_id}/", headers=headers).json()["status"]
                if status == "done" and session_id not in approved:
                    url = f"{base}/v1/importsession/{session_id}/approve_all/"
                    self.client.patch(url, headers=headers).raise_for_status()
                    approved.add(session_id)
                    status = "approving"
                unfinished += status in ("processing", "approving")
            if not unfinished:
                break
            time.sleep(APPROVAL_POLL_SECONDS)
        return len(approved)

    def close(self) -> None:
        self.client.close()


def start_sandbox(group: Children, options: SandboxOptions, env: Mapping[str, str]) -> Sandbox:
    env_file = group.directory / "sandbox.env"
    child = group.spawn("sandbox", options.arguments(env_file), env)
    line = child.wait_for_line(lambda text: _LISTENING.search(text) is not None, READY_SECONDS)
    match = _LISTENING.search(line)
    assert match is not None
    while not env_file.exists():  # written just before the line is printed
        time.sleep(0.05)
    return Sandbox(child, match.group(1), _read_env_file(env_file), round(time.monotonic() - child.spawned, 2))


class StatsSampler:
    """The sandbox's request counters once a second, in a thread, for rates over time."""

    def __init__(self, sandbox: Sandbox, interval: float = 1.0) -> None:
        self._client = httpx.Client(base_url=sandbox.base_url, timeout=60)
        self._interval = interval
        self._stop = threading.Event()
        # (time.monotonic(), Graph lookups answered, Graph HTTP requests, ThreatStream requests)
        self.samples: list[tuple[float, int, int, int]] = []
        self._thread = threading.Thread(target=self._run, name="sandbox-stats", daemon=True)

    def __enter__(self) -> StatsSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stats = self._client.get("/_sandbox/stats").json()
            except httpx.HTTPError:
                pass
            else:
                self.samples.append(
                    (
                        time.monotonic(),
                        stats["graph"]["lookups"],
                        stats["graph"]["http_requests"],
                        sum(stats["threatstream"]["requests"].values()),
                    )
                )
            self._stop.wait(self._interval)
