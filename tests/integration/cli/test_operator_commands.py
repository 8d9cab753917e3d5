"""`tibridge preflight`, `explain` and `reconcile` against the sandbox: each failing path named, foreign entries told
apart from ours, drift found exactly and repaired through the publisher."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from tests.fixtures.sandbox import SandboxFactory
from tests.sbdouble import ServiceBusDouble
from tibridge.cli.commands import run_pipeline
from tibridge.cli.explain import explain, run_explain
from tibridge.cli.preflight import CheckResult, Status, exit_code_of, preflight, run_preflight
from tibridge.cli.reconcile import reconcile, run_reconcile, send_repairs
from tibridge.cli.state import StateError
from tibridge.common.bus.servicebus import ServiceBusBus
from tibridge.common.clock import SystemClock
from tibridge.common.contracts import Envelope, IndicatorScored, decode
from tibridge.common.runtime import ServiceName
from tibridge.common.settings import BusKind
from tibridge.common.topology import PUBLISHER_SUBSCRIPTION, SCORED_TOPIC
from tibridge.publisher.reconciliation import repairs
from tibridge.sandbox import SandboxServer

CLOCK = SystemClock()


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Settings shared by every test here: one process on the in-memory bus, direct upserts, no probe port."""
    for name, value in {
        "TIBRIDGE_BUS": "memory",
        "TIBRIDGE_CHECKPOINT_PATH": str(tmp_path / "checkpoint.json"),
        "TIBRIDGE_PUBLISHER_MODE": "direct",
        "TIBRIDGE_HEALTH_PORT": "0",
        "TIBRIDGE_RECONCILE_SETTLE_SECONDS": "0",
        "TIBRIDGE_ONCE_REFUSED_SECONDS": "20",
    }.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


def _point_at(monkeypatch: pytest.MonkeyPatch, server: SandboxServer) -> None:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)


def _by_check(results: list[CheckResult]) -> dict[tuple[str, str], CheckResult]:
    return {(result.service, result.check): result for result in results}


# -- preflight ----------------------------------------------------------------------------------------------


async def test_preflight_passes_against_a_sandbox_that_grants_everything(
    environment: pytest.MonkeyPatch, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(anchor=None) as server:
        _point_at(environment, server)
        results = await preflight(list(ServiceName), CLOCK)
    assert exit_code_of(results) == 0, [r.line() for r in results if r.status is Status.FAIL]
    checks = _by_check(results)
    assert "Log Analytics Reader granted" in checks[("collector", "Log Analytics")].detail
    assert "readable and writable" in checks[("collector", "checkpoint")].detail
    assert checks[("scorer", "Graph reputation")].status is Status.OK
    assert checks[("publisher", "ThreatStream 'Approve Intel'")].status is Status.OK
    # Direct mode imports nothing; the in-memory bus has nothing to check, and says so.
    assert "not needed" in checks[("publisher", "ThreatStream 'Import Intelligence'")].detail
    assert "in-memory bus" in checks[("scorer", "bus")].detail


async def test_preflight_names_what_each_api_lacks(
    environment: pytest.MonkeyPatch, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    environment.setenv("TIBRIDGE_CHECKPOINT_PATH", str(blocker / "checkpoint.json"))
    environment.setenv("TIBRIDGE_PUBLISHER_MODE", "approval")
    environment.setenv("TIBRIDGE_PUBLISHER_AUTO_APPROVE", "true")
    async with sandbox_factory(
        anchor=None, loganalytics_forbidden=True, graph_refusal="forbidden", threatstream_permissions=["import"]
    ) as server:
        _point_at(environment, server)
        results = await preflight(list(ServiceName), CLOCK)
    checks = _by_check(results)
    failed = {key for key, result in checks.items() if result.status is Status.FAIL}
    assert failed == {
        ("collector", "Log Analytics"),
        ("collector", "checkpoint"),
        ("scorer", "Graph reputation"),
        ("publisher", "ThreatStream 'Approve Intel'"),
        ("publisher", "ThreatStream 'Approve Import'"),
    }
    assert exit_code_of(results) == 1
    assert "Log Analytics Reader" in checks[("collector", "Log Analytics")].detail
    assert "a-file/checkpoint.json: Not a directory" in checks[("collector", "checkpoint")].detail
    assert "ThreatIntelligence.Read.All" in checks[("scorer", "Graph reputation")].detail
    assert "'Approve Intel'" in checks[("publisher", "ThreatStream 'Approve Intel'")].detail
    assert "TIBRIDGE_PUBLISHER_AUTO_APPROVE" in checks[("publisher", "ThreatStream 'Approve Import'")].detail
    # The token itself is fine, and what cannot be probed without an import is said, not failed.
    assert checks[("scorer", "Graph token")].status is Status.OK
    assert checks[("publisher", "ThreatStream 'Import Intelligence'")].status is Status.UNCHECKED


async def test_preflight_names_a_tenant_waiting_for_verification_and_a_wrong_key(
    environment: pytest.MonkeyPatch, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(anchor=None, graph_refusal="tenant_unverified") as server:
        _point_at(environment, server)
        environment.setenv("TIBRIDGE_THREATSTREAM_API_KEY", "not-the-key")
        checks = _by_check(await preflight([ServiceName.SCORER, ServiceName.PUBLISHER], CLOCK))
    assert "verified" in checks[("scorer", "Graph reputation")].detail
    assert checks[("publisher", "ThreatStream key")].status is Status.FAIL
    assert "TIBRIDGE_THREATSTREAM_API_KEY" in checks[("publisher", "ThreatStream key")].detail


async def test_preflight_over_service_bus_checks_send_and_receive_per_service(
    environment: pytest.MonkeyPatch, sandbox_factory: SandboxFactory, sb_double: ServiceBusDouble
) -> None:
    environment.setenv("TIBRIDGE_BUS", "servicebus")
    environment.setenv("TIBRIDGE_SERVICEBUS_CONNECTION_STRING", sb_double.connection_string)
    async with sandbox_factory(anchor=None) as server:
        _point_at(environment, server)
        checks = _by_check(await preflight(list(ServiceName), CLOCK))
    assert checks[("collector", "send to topic indicators")].status is Status.OK
    assert checks[("scorer", "receive from indicators/scorer")].status is Status.OK
    assert checks[("scorer", "send to topic scored")].status is Status.OK
    assert checks[("publisher", "receive from scored/publisher")].status is Status.OK
    assert checks[("collector", "peek at indicators/scorer (readiness)")].status is Status.OK
    assert checks[("publisher", "peek at indicators/scorer (readiness)")].status is Status.OK
    # The double has no management API: the rule is said to be unchecked, with the rule to look for.
    rule = checks[("publisher", "rule of scored/publisher")]
    assert rule.status is Status.UNCHECKED
    assert "publish-or-expire" in rule.detail


# -- explain and reconcile ----------------------------------------------------------------------------------


async def _run_pipeline() -> None:
    assert await run_pipeline(bus=BusKind.MEMORY, once=True, since=None) == 0


async def test_explain_tells_our_entry_from_foreign_ones(
    environment: pytest.MonkeyPatch, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(
        anchor=None, indicators=300, threatstream_foreign_share=1.0, threatstream_processing_seconds=0
    ) as server:
        _point_at(environment, server)
        await _run_pipeline()
        async with httpx.AsyncClient(base_url=server.base_url) as control:
            objects = (await control.get("/_sandbox/threatstream/objects?include=all")).json()["objects"]
        ours = {obj["value"] for obj in objects if not obj["foreign"] and obj["status"] == "active"}
        value = sorted(ours & {obj["value"] for obj in objects if obj["foreign"]})[0]
        story = await explain(value, CLOCK)
    assert story.rows, "its Sentinel rows are shown"
    assert all("→" not in row["normalised"] for row in story.rows)
    assert story.verdict is not None
    assert str(story.verdict.verdict) == "publish"
    entries = {entry["id"]: entry for entry in story.entries}
    held = {obj["id"]: obj for obj in objects if obj["value"] == value}
    assert set(entries) == set(held)
    for object_id, obj in held.items():
        assert entries[object_id]["ours"] is (not obj["foreign"])
        if obj["foreign"]:
            assert entries[object_id]["why_not_ours"]


async def test_explain_a_value_sentinel_never_had(
    environment: pytest.MonkeyPatch, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(
        anchor=None, indicators=50, threatstream_whitelist=("never-seen.example.org",)
    ) as server:
        _point_at(environment, server)
        story = await explain("never-seen.example.org", CLOCK)
    assert (story.rows, story.verdict, story.entries) == ([], None, [])
    told = "\n".join(story.lines())
    assert "nothing reaches the scorer" in told
    assert "whitelist" in told


async def test_reconcile_finds_seeded_drift_exactly_and_repair_clears_it(
    environment: pytest.MonkeyPatch, sandbox_factory: SandboxFactory, tmp_path: Path
) -> None:
    async with sandbox_factory(anchor=None, indicators=300, threatstream_processing_seconds=0) as server:
        _point_at(environment, server)
        await _run_pipeline()
        clean, _ = await reconcile(CLOCK)
        assert clean.drift.differences == 0
        async with httpx.AsyncClient(base_url=server.base_url) as control:
            drift = (await control.post("/_sandbox/threatstream/drift")).json()

        found, publishing = await reconcile(CLOCK)
        assert [scored.observable.value for scored in found.drift.missing] == [drift["missing"]]
        assert [item.scored.observable.value for item in found.drift.stale] == [drift["stale"]]
        assert [item.obj.value for item in found.drift.unexpected] == [drift["unexpected"]]
        report = found.markdown()
        for value in drift.values():
            assert f"`{value}`" in report

        await send_repairs(publishing, repairs(found.drift, CLOCK.now()), CLOCK)
        after, _ = await reconcile(CLOCK)
        assert after.drift.differences == 0
        # The repairs went through the publisher's rules: only objects of ours were changed.
        assert server.stats()["threatstream"]["foreign"]["changed"] == []


async def test_reconcile_refuses_to_judge_on_part_of_threatstream(
    environment: pytest.MonkeyPatch, sandbox_factory: SandboxFactory
) -> None:
    environment.setenv("TIBRIDGE_RECONCILE_PAGE_SIZE", "2")
    environment.setenv("TIBRIDGE_RECONCILE_MAX_PAGES", "1")
    async with sandbox_factory(anchor=None, indicators=300, threatstream_processing_seconds=0) as server:
        _point_at(environment, server)
        await _run_pipeline()
        publisher_searches = server.stats()["threatstream"]["requests"]["search"]
        with pytest.raises(StateError, match="TIBRIDGE_RECONCILE_MAX_PAGES"):
            await reconcile(CLOCK)
        requests = server.stats()["threatstream"]["requests"]
    # One page read, then refused: never more than the bound.
    assert requests["search"] == 1 + publisher_searches


async def test_preflight_checks_a_blob_checkpoint_for_reading_and_writing(
    environment: pytest.MonkeyPatch, sandbox_factory: SandboxFactory, azurite: str
) -> None:
    environment.setenv("TIBRIDGE_CHECKPOINT_STORE", "blob")
    environment.setenv("TIBRIDGE_CHECKPOINT_CONTAINER", "preflight")
    environment.setenv("TIBRIDGE_CHECKPOINT_CONNECTION_STRING", azurite)
    async with sandbox_factory(anchor=None, indicators=20) as server:
        _point_at(environment, server)
        granted = _by_check(await preflight([ServiceName.COLLECTOR], CLOCK))[("collector", "checkpoint")]
        wrong_key = azurite.replace("AccountKey=", "AccountKey=AAAA")
        environment.setenv("TIBRIDGE_CHECKPOINT_CONNECTION_STRING", wrong_key)
        refused = _by_check(await preflight([ServiceName.COLLECTOR], CLOCK))[("collector", "checkpoint")]
    assert granted.status is Status.OK
    assert "blob preflight/collector-checkpoint.json readable and writable" in granted.detail
    assert refused.status is Status.FAIL
    assert "checkpoint" in refused.detail


async def test_repairs_over_service_bus_are_messages_on_scored_for_the_publisher(
    environment: pytest.MonkeyPatch, sandbox_factory: SandboxFactory, sb_double: ServiceBusDouble
) -> None:
    async with sandbox_factory(anchor=None, indicators=300, threatstream_processing_seconds=0) as server:
        _point_at(environment, server)
        await _run_pipeline()
        async with httpx.AsyncClient(base_url=server.base_url) as control:
            drift = (await control.post("/_sandbox/threatstream/drift")).json()
        found, publishing = await reconcile(CLOCK)
    over_the_bus = publishing.model_copy(
        update={
            "bus": BusKind.SERVICEBUS,
            "servicebus": publishing.servicebus.model_copy(
                update={"connection_string": SecretStr(sb_double.connection_string)}
            ),
        }
    )
    said = await send_repairs(over_the_bus, repairs(found.drift, CLOCK.now()), CLOCK)
    assert "sent 3 messages to topic scored" in said
    bus = ServiceBusBus.from_connection_string(sb_double.connection_string)
    try:
        async with bus.receiver(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION) as receiver:
            received = await receiver.receive(10, 5.0)
            for message in received:
                await receiver.complete(message)
    finally:
        await bus.close()
    verdicts = {}
    for message in received:
        envelope = decode(message.body)
        assert isinstance(envelope, Envelope)
        assert isinstance(envelope.payload, IndicatorScored)
        verdicts[envelope.payload.observable.value] = str(envelope.payload.verdict)
    assert verdicts == {drift["missing"]: "publish", drift["stale"]: "expire", drift["unexpected"]: "expire"}


async def test_the_commands_exit_codes_json_and_report(
    environment: pytest.MonkeyPatch,
    sandbox_factory: SandboxFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with sandbox_factory(anchor=None, indicators=300, threatstream_processing_seconds=0) as server:
        _point_at(environment, server)
        await _run_pipeline()
        async with httpx.AsyncClient(base_url=server.base_url) as control:
            drift = (await control.post("/_sandbox/threatstream/drift")).json()
        capsys.readouterr()
        report = tmp_path / "reconcile.md"
        assert await run_reconcile(repair=False, as_json=True, report=report) == 1
        found = json.loads(capsys.readouterr().out)
        assert found["missing"]["samples"] == [drift["missing"]]
        assert [item["value"] for item in found["unexpected"]["samples"]] == [drift["unexpected"]]
        assert "| **stale-active** | 1 |" in report.read_text()
        assert await run_reconcile(repair=True, as_json=False, report=None) == 0
        capsys.readouterr()
        assert await run_reconcile(repair=False, as_json=True, report=None) == 0
        assert json.loads(capsys.readouterr().out)["missing"]["count"] == 0
        assert await run_explain(drift["missing"], as_json=True) == 0
        story = json.loads(capsys.readouterr().out)
        assert story["verdict"]["verdict"] == "publish"
        assert await run_preflight([ServiceName.PUBLISHER], as_json=True) == 0
        assert json.loads(capsys.readouterr().out)["ok"] is True


async def test_reconcile_reads_a_big_span_as_the_collector_plans_it(
    environment: pytest.MonkeyPatch, sandbox_factory: SandboxFactory
) -> None:
    async with sandbox_factory(anchor=None, indicators=300, threatstream_processing_seconds=0) as server:
        _point_at(environment, server)
        await _run_pipeline()
        whole, _ = await reconcile(CLOCK)
        counts_before = server.stats()["loganalytics"]["count_queries"]
        environment.setenv("TIBRIDGE_COLLECTOR_ROWS_PER_QUERY", "40")
        cut, _ = await reconcile(CLOCK)
        counted = server.stats()["loganalytics"]["count_queries"] - counts_before
    assert counted == 1
    # Each window has the newest row of each indicator in it, so an indicator re-published across windows is read
    # more than once; the newest of its rows decides, as in one read.
    assert cut.rows >= whole.rows
    assert (cut.indicators, cut.desired) == (whole.indicators, whole.desired)
    assert cut.drift.differences == whole.drift.differences == 0
