"""serve / run_service: workers until stop or done, exit codes, the health endpoints, the bus from settings."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.fixtures.runtime import free_port
from tibridge.common import runtime, telemetry
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import Bus, BusUnavailable
from tibridge.common.bus.servicebus import ServiceBusBus
from tibridge.common.clock import Clock
from tibridge.common.identity import CredentialError
from tibridge.common.metrics import Snapshot
from tibridge.common.runtime import (
    Service,
    ServiceName,
    ServiceSpec,
    bus_from_settings,
    readiness_problems,
    run_service,
    serve,
)
from tibridge.common.settings import ServiceSettings, load_settings

pytestmark = pytest.mark.usefixtures("restored_logging")


QUICK = {"bus": "memory", "health_port": 0, "shutdown_grace_seconds": 0.1}


def settings(**overrides: object) -> ServiceSettings:
    return load_settings(ServiceSettings, **{**QUICK, **overrides})


class OneShot:
    name = "one-shot"

    def __init__(self) -> None:
        self.ran = False

    async def run(self, stop: asyncio.Event) -> None:
        self.ran = True


class UntilStopped:
    def __init__(self, name: str = "until-stopped") -> None:
        self.name = name
        self.stopped = False
        self.paused_reason: str | None = None

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.stopped = True


class Crashing:
    name = "crashing"

    async def run(self, stop: asyncio.Event) -> None:
        raise RuntimeError("the worker broke")


class Refusing:
    name = "refusing"

    async def run(self, stop: asyncio.Event) -> None:
        raise runtime.WorkerRefused("the backfill is over TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS")


class Stubborn:
    name = "stubborn"

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.Event().wait()


class FlakyBus(MemoryBus):
    def __init__(self) -> None:
        super().__init__()
        self.reachable = True

    async def check(self) -> None:
        if not self.reachable:
            raise BusUnavailable("Service Bus is not ready: connection refused")


async def test_serve_returns_0_once_every_one_shot_worker_is_done() -> None:
    first, second = OneShot(), OneShot()
    assert await serve(settings(), MemoryBus(), [Service([first]), Service([second])]) == 0
    assert first.ran
    assert second.ran


async def test_serve_stops_every_worker_when_asked() -> None:
    stop = asyncio.Event()
    workers = [UntilStopped("a"), UntilStopped("b")]
    serving = asyncio.create_task(serve(settings(), MemoryBus(), [Service(list(workers))], stop=stop))
    await asyncio.sleep(0.05)
    assert not serving.done()
    stop.set()
    assert await asyncio.wait_for(serving, 10) == 0
    assert all(worker.stopped for worker in workers)


async def test_a_crashed_worker_stops_the_others_and_makes_the_exit_code_1(caplog: pytest.LogCaptureFixture) -> None:
    survivor = UntilStopped()
    code = await asyncio.wait_for(serve(settings(), MemoryBus(), [Service([survivor, Crashing()])]), 10)
    assert code == 1
    assert survivor.stopped
    assert "worker crashing crashed; stopping the service" in caplog.text
    assert "the worker broke" in caplog.text


async def test_a_refusing_worker_stops_the_others_with_one_sentence_and_exit_code_2(
    caplog: pytest.LogCaptureFixture,
) -> None:
    survivor = UntilStopped()
    code = await asyncio.wait_for(serve(settings(), MemoryBus(), [Service([survivor, Refusing()])]), 10)
    assert code == 2
    assert survivor.stopped
    [record] = [record for record in caplog.records if record.levelname == "ERROR"]
    assert record.getMessage() == "worker refusing stopped: the backfill is over TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS"
    assert record.exc_info is None


async def test_a_worker_that_ignores_stop_is_cancelled_after_the_grace_period(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "SETTLE_ALLOWANCE_SECONDS", 0.05)
    stop = asyncio.Event()
    stop.set()
    assert await asyncio.wait_for(serve(settings(), MemoryBus(), [Service([Stubborn()])], stop=stop), 10) == 0
    assert "stubborn did not stop within" in caplog.text


@contextlib.asynccontextmanager
async def serving(bus: Bus, service: Service) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings(health_port=port, health_host="127.0.0.1"), bus, [service], stop=stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

        async def alive() -> bool:
            with contextlib.suppress(httpx.TransportError):
                return (await client.get("/healthz")).status_code == 200
            return False

        for _ in range(500):
            if await alive():
                break
            await asyncio.sleep(0.01)
        try:
            yield client
        finally:
            stop.set()
            assert await asyncio.wait_for(task, 10) == 0
    async with httpx.AsyncClient(timeout=1) as after:
        with pytest.raises(httpx.TransportError):
            await after.get(f"http://127.0.0.1:{port}/healthz")


async def test_health_endpoints_report_alive_and_every_reason_not_to_be_ready() -> None:
    bus = FlakyBus()
    worker = UntilStopped("indicators/scorer")
    failing: list[str] = []

    async def graph_reachable() -> str | None:
        return failing[0] if failing else None

    async with serving(bus, Service([worker], readiness=[graph_reachable])) as client:
        alive = await client.get("/healthz")
        assert (alive.status_code, alive.json()) == (200, {"status": "alive"})
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})

        bus.reachable = False
        failing.append("Graph answers 401: check TIBRIDGE_CREDENTIAL")
        worker.paused_reason = "ThreatStream refuses the API key"
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json() == {
            "status": "not ready",
            "reasons": [
                "Service Bus is not ready: connection refused",
                "Graph answers 401: check TIBRIDGE_CREDENTIAL",
                "indicators/scorer is paused: ThreatStream refuses the API key",
            ],
        }
        assert (await client.get("/healthz")).status_code == 200


async def test_readiness_reasons_never_carry_secrets() -> None:
    async def leaky() -> str | None:
        return "login failed with Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.payload.sig"

    async with serving(MemoryBus(), Service([UntilStopped()], readiness=[leaky])) as client:
        body = (await client.get("/readyz")).text
    assert "eyJhbGciOiJSUzI1NiJ9" not in body


async def test_a_check_that_fails_or_hangs_is_a_reason_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "READINESS_TIMEOUT_SECONDS", 0.05)

    async def broken() -> str | None:
        raise KeyError("no such thing")

    async def hanging() -> str | None:
        await asyncio.Event().wait()
        return None

    reasons = await readiness_problems(MemoryBus(), [broken, hanging])
    assert len(reasons) == 2
    assert reasons[0].startswith("a readiness check (")
    assert "broken" in reasons[0]
    assert reasons[0].endswith("failed: KeyError")
    assert "hanging" in reasons[1]
    assert "took longer than" in reasons[1]
    assert await readiness_problems(MemoryBus(), [], stopping=True) == ["the service is stopping"]


async def test_a_taken_health_port_is_a_clear_error() -> None:
    port = free_port()
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    try:
        with pytest.raises(OSError, match=f"127.0.0.1:{port}.*TIBRIDGE_HEALTH_PORT"):
            await serve(settings(health_port=port, health_host="127.0.0.1"), MemoryBus(), [Service([OneShot()])])
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_run_service_builds_serves_and_closes_the_resources(caplog: pytest.LogCaptureFixture) -> None:
    closed: list[str] = []
    worker = OneShot()

    async def build(
        service_settings: ServiceSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock
    ) -> Service:
        assert isinstance(bus, MemoryBus)
        assert service_settings.shutdown_grace_seconds == 0.1
        resources.push_async_callback(_record, closed, "client")
        return Service([worker], counts=Built)

    spec = ServiceSpec(ServiceName.SCORER, ServiceSettings, build)
    assert spec.process_name == "tibridge-scorer"
    with caplog.at_level("INFO", logger="tibridge.common.runtime"):
        assert await run_service(spec, **QUICK) == 0
    assert worker.ran
    assert closed == ["client"]
    [stopped] = [record for record in caplog.records if record.getMessage() == "tibridge-scorer stopped"]
    assert stopped.__dict__["counts"] == {"built": 1}  # set through the log call's `extra`


@dataclasses.dataclass(frozen=True)
class Built(Snapshot):
    built: int = 1


def test_a_service_hands_out_its_counts_typed() -> None:
    service = Service([OneShot()], counts=Built)
    assert service.snapshot(Built).built == 1
    with pytest.raises(TypeError, match="counts Built, not OneShotCounts"):
        service.snapshot(OneShotCounts)


@dataclasses.dataclass(frozen=True)
class OneShotCounts(Snapshot):
    ran: bool = True


async def _record(into: list[str], what: str) -> None:
    into.append(what)


async def test_the_memory_bus_comes_from_the_settings_and_closes_with_the_resources() -> None:
    async with contextlib.AsyncExitStack() as resources:
        bus = await bus_from_settings(settings(), resources)
        assert isinstance(bus, MemoryBus)


async def test_a_namespace_with_the_sandbox_credential_is_refused_unless_loopback() -> None:
    namespace_settings = settings(
        bus="servicebus", servicebus_namespace="contoso.servicebus.windows.net", credential="sandbox"
    )
    async with contextlib.AsyncExitStack() as resources:
        with pytest.raises(CredentialError, match="TIBRIDGE_CREDENTIAL=default"):
            await bus_from_settings(namespace_settings, resources)


async def test_a_namespace_gets_the_default_credential_closed_with_the_resources() -> None:
    namespace_settings = settings(bus="servicebus", servicebus_namespace="contoso.servicebus.windows.net")
    async with contextlib.AsyncExitStack() as resources:
        bus = await bus_from_settings(namespace_settings, resources)
        assert isinstance(bus, ServiceBusBus)


def test_main_runs_a_service_from_its_spec_alone_and_bad_settings_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("TIBRIDGE_SERVICEBUS_CONNECTION_STRING", "TIBRIDGE_SERVICEBUS_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)

    async def never_built(
        service_settings: ServiceSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock
    ) -> Service:
        raise AssertionError("bad settings must stop the process before anything is built")

    spec = ServiceSpec(ServiceName.PUBLISHER, ServiceSettings, never_built)
    assert runtime.main(spec, bus="servicebus") == runtime.EXIT_BAD_SETTINGS
    assert capsys.readouterr().err == (
        "error: Set TIBRIDGE_SERVICEBUS_CONNECTION_STRING or TIBRIDGE_SERVICEBUS_NAMESPACE (or TIBRIDGE_BUS=memory).\n"
    )


async def test_a_process_configures_observability_once(monkeypatch: pytest.MonkeyPatch) -> None:
    configured: list[str] = []
    monkeypatch.setattr(telemetry, "configure", lambda name, **options: configured.append(name))

    async def build(
        service_settings: ServiceSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock
    ) -> Service:
        return Service([OneShot()])

    assert await run_service(ServiceSpec(ServiceName.COLLECTOR, ServiceSettings, build), **QUICK) == 0
    assert configured == ["tibridge-collector"]
