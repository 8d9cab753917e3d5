"""Renders the dashboard's panels from a real run, for the README: `python deploy/grafana/snapshot.py`.

Grafana itself is in none of the registries this project can install from, so this is not Grafana. What it is:
the sandbox (seeded data, 429s on every API, latency like the benchmark's) and `tibridge run` as processes, the
pipeline's /metrics scraped every second by a real Prometheus (Debian's `prometheus` package), every query of
deploy/grafana/tibridge.json evaluated by that Prometheus (`/api/v1/query_range`, `$__rate_interval` = 15 s), and
the series drawn by a small page of our own (snapshot.html) that headless Chromium (Debian's `chromium`) renders
to a PNG. Needs: `apt-get install prometheus chromium`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "tibridge.json"
PAGE = HERE / "snapshot.html"
RATE_INTERVAL = "15s"
SCRAPE_SECONDS = 1
# As the benchmark: Log Analytics 1 s per query, Graph 100 ms and ThreatStream 500 ms per request; 429s on each.
FAULTS = (
    "loganalytics.latency_ms=1000",
    "loganalytics.p429=0.2",
    "graph.latency_ms=100",
    "graph.p429=0.002",
    "threatstream.latency_ms=500",
    "threatstream.p429=0.2",
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _environment(**settings: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TIBRIDGE_", "OTEL_"))} | settings


@contextlib.contextmanager
def _process(command: Sequence[str], log: Path, environment: dict[str, str] | None = None) -> Iterator[None]:
    with log.open("wb") as output:
        # Our own fixed commands: this interpreter, prometheus, chromium.
        process = subprocess.Popen(list(command), env=environment, stdout=output, stderr=output)  # noqa: S603
        try:
            yield
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for(what: str, ready: Any, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start within {seconds:.0f} s")
        time.sleep(0.3)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _metric(metrics_url: str, name: str) -> float:
    text = httpx.get(metrics_url, timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def snapshot(out: Path, *, indicators: int, seconds: float, work: Path) -> dict[str, Any]:
    prometheus, chromium = shutil.which("prometheus"), shutil.which("chromium")
    if prometheus is None or chromium is None:
        raise SystemExit("needs Debian's prometheus and chromium: apt-get install prometheus chromium")
    env_file = work / "sandbox.env"
    tibridge = [sys.executable, "-m", "tibridge.cli"]
    sandbox = [*tibridge, "sandbox", "--port", "0", "--env-file", str(env_file), "--indicators", str(indicators)]
    sandbox += [part for fault in FAULTS for part in ("--fault", fault)]
    sandbox += ["--set", "threatstream_whitelist_share=0.02"]
    health, prometheus_port = _free_port(), _free_port()
    metrics_url = f"http://127.0.0.1:{health}/metrics"
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    config = work / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_SECONDS}s\n  evaluation_interval: {SCRAPE_SECONDS}s\n"
        f"scrape_configs:\n  - job_name: tibridge\n    static_configs:\n      - targets: ['127.0.0.1:{health}']\n"
    )
    with _process(sandbox, work / "sandbox.log", _environment()):
        _wait_for("the sandbox", lambda: env_file.exists() and "API_KEY" in env_file.read_text())
        settings = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        settings |= {
            "TIBRIDGE_HEALTH_HOST": "127.0.0.1",
            "TIBRIDGE_HEALTH_PORT": str(health),
            "TIBRIDGE_PUBLISHER_MODE": "direct",
            "TIBRIDGE_CHECKPOINT_PATH": str(work / "checkpoint.json"),
            "TIBRIDGE_COLLECTOR_INTERVAL": "PT30S",
            "TIBRIDGE_COLLECTOR_ROWS_PER_QUERY": "2000",
        }
        prometheus_command = [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ]
        with _process(prometheus_command, work / "prometheus.log"):
            _wait_for("Prometheus", lambda: _answers(f"{prometheus_url}/-/ready"))
            started = time.time()
            with _process([*tibridge, "run"], work / "run.log", _environment(**settings)):
                _wait_for("tibridge run", lambda: _answers(metrics_url))
                time.sleep(seconds)
                emitted = _metric(metrics_url, "tibridge_collector_emitted_total")
            time.sleep(3 * SCRAPE_SECONDS)
            ended = time.time()
            panels = _evaluate(prometheus_url, started, ended)
    data = {
        "panels": panels,
        "start": started,
        "end": ended,
        "indicators": indicators,
        "emitted": emitted,
        "faults": list(FAULTS),
        "rate_interval": RATE_INTERVAL,
        "rendered": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    page = work / "snapshot.html"
    page.write_text(PAGE.read_text().replace("/*DATA*/null", json.dumps(data)))
    subprocess.run(  # noqa: S603 - Debian's chromium, found on PATH above
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={work / 'chromium'}",
            "--window-size=1600,1500",
            f"--screenshot={out}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return data


def _evaluate(prometheus_url: str, start: float, end: float) -> list[dict[str, Any]]:
    """Every panel's targets, evaluated by Prometheus over the run; a query that errs or finds nothing stops us."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    step = max(1, round((end - start) / 300))
    for panel in dashboard["panels"]:
        targets = []
        for target in panel["targets"]:
            expression = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            answer = httpx.get(
                f"{prometheus_url}/api/v1/query_range",
                params={"query": expression, "start": start, "end": end, "step": step},
                timeout=30,
            ).json()
            if answer.get("status") != "success":
                raise SystemExit(f"Prometheus refused {expression!r}: {answer.get('error')}")
            result = answer["data"]["result"]
            targets.append({"expr": target["expr"], "legend": target["legendFormat"], "result": result})
        if not any(target["result"] for target in targets):
            raise SystemExit(f"the panel {panel['title']!r} has no data in this run")
        panels.append(
            {
                "title": panel["title"],
                "unit": panel["fieldConfig"]["defaults"]["unit"],
                "stacked": panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal",
                "log": panel["fieldConfig"]["defaults"]["custom"].get("scaleDistribution", {}).get("type") == "log",
                "gridPos": panel["gridPos"],
                "targets": targets,
            }
        )
    return panels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--indicators", type=int, default=20_000)
    parser.add_argument("--seconds", type=float, default=150.0, help="How long the pipeline runs.")
    arguments = parser.parse_args()
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tibridge-snapshot-") as work:
        data = snapshot(
            arguments.out.resolve(), indicators=arguments.indicators, seconds=arguments.seconds, work=Path(work)
        )
    print(
        f"wrote {arguments.out}: {len(data['panels'])} panels over {data['end'] - data['start']:.0f} s, "
        f"{data['emitted']:.0f} indicators emitted of {data['indicators']:,} seeded"
    )


if __name__ == "__main__":
    main()
