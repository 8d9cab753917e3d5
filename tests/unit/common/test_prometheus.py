"""What /metrics exposes: every Tally of a name summed, gauges read at the scrape, histograms with their unit, and
nothing at all when Prometheus was not asked for. Each case runs in a process of its own (providers are set once)."""

from __future__ import annotations

import os
import textwrap

import httpx

from tests.fixtures.runtime import fresh_process_output
from tibridge.common import telemetry
from tibridge.common.health import HealthServer

_SCRIPT = textwrap.dedent(
    """
    import gc, sys
    from tibridge.common import telemetry
    telemetry.configure("tibridge-test", {}, prometheus=sys.argv[1] == "on")
    from tibridge.common.metrics import Distribution, Gauge, Tally

    class Queue:
        def __init__(self, depth): self.depth = depth
        def read(self): return self.depth

    first, second = Tally("tibridge.test.settled", "Settled"), Tally("tibridge.test.settled", "Settled")
    first.add(3, outcome="completed")
    second.add(2, outcome="completed")
    second.add(outcome="dead_lettered")
    Distribution("tibridge.test.wait", "Wait", unit="s").record(1.5)
    backlog = Gauge.named("tibridge.test.backlog", "Backlog")
    kept, dropped = Queue(7), Queue(9)
    backlog.watch(kept.read, subscription="a")
    backlog.watch(dropped.read, subscription="b")
    backlog.watch(lambda: None, subscription="c")
    del dropped
    gc.collect()
    print((telemetry.scrape() or b"NOTHING").decode())
    """
)


def _scrape(mode: str) -> str:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    return fresh_process_output(_SCRIPT, mode, environment=environment)


def test_metrics_are_exposed_as_prometheus_reads_them() -> None:
    text = _scrape("on")
    lines = set(text.splitlines())
    assert "# TYPE tibridge_test_settled_total counter" in lines
    assert 'tibridge_test_settled_total{outcome="completed"} 5.0' in lines  # both Tallies of the name
    assert 'tibridge_test_settled_total{outcome="dead_lettered"} 1.0' in lines
    assert "tibridge_test_wait_seconds_count 1.0" in lines
    assert "tibridge_test_wait_seconds_sum 1.5" in lines
    assert 'tibridge_test_backlog{subscription="a"} 7.0' in lines
    # A watched object that is gone stops reporting, and a reading of None leaves its series out.
    assert 'subscription="b"' not in text
    assert 'subscription="c"' not in text
    assert any(line.startswith("process_resident_memory_bytes ") for line in lines)


def test_without_prometheus_nothing_is_exposed() -> None:
    assert _scrape("off").strip() == "NOTHING"


async def test_the_health_port_says_when_metrics_are_off() -> None:
    async def ready() -> list[str]:
        return []

    assert telemetry.scrape() is None  # this test process never asked for Prometheus
    async with HealthServer("127.0.0.1", 0, ready) as server, httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/metrics")
    assert response.status_code == 404
    assert response.text == "metrics are off here (TIBRIDGE_HEALTH_METRICS=false)\n"
