"""The publisher on the in-memory bus with a scripted ThreatStream: batching, settlement, refusals, missing
permissions, revision order and poison."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.publisher import (
    INDICATOR_TIME,
    FakeGateway,
    ThreatStreamDouble,
    depth,
    fast_consumer,
    observable,
    publish_scored,
    publisher_settings,
    rejecting,
    request_values,
    running,
    scored_indicator,
    search_object,
    threatstream_accepting,
)
from tests.fixtures.runtime import eventually
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import OutgoingMessage
from tibridge.common.clock import SystemClock
from tibridge.common.contracts import IndicatorScored, ObservableType, Verdict
from tibridge.common.runtime import Service
from tibridge.common.settings import load_settings
from tibridge.common.topology import INDICATORS_TOPIC, PUBLISHER_SUBSCRIPTION, SCORED_TOPIC
from tibridge.publisher import planning
from tibridge.publisher.app import assemble, build
from tibridge.publisher.mapping import intel_object
from tibridge.publisher.payloads import IMPORT_PATH, INTELLIGENCE_PATH, Operation, Permission, ThreatStreamRequest
from tibridge.publisher.sessions import WHITELISTED
from tibridge.publisher.settings import PublisherSettings, PublishMode
from tibridge.publisher.threatstream import Answer, Outcome
from tibridge.publisher.worker import (
    PERMISSION_REASON,
    REJECTED_REASON,
    UNMAPPABLE_REASON,
    PublisherCounts,
)


def a_service(
    bus: MemoryBus,
    gateway: FakeGateway,
    *,
    mode: PublishMode = PublishMode.DIRECT,
    batch_size: int = 10,
    batch_age_seconds: float = 600.0,
    **settings: Any,
) -> Service:
    loaded = publisher_settings(
        publisher_mode=mode,
        publisher_batch_size=batch_size,
        publisher_batch_age_seconds=batch_age_seconds,
        threatstream_probe_interval_seconds=0.05,
        **settings,
    )
    return assemble(loaded, bus, SystemClock(), fast_consumer(loaded), gateway=gateway)


def counts_of(service: Service) -> PublisherCounts:
    return service.snapshot(PublisherCounts)


async def dead_letters(bus: MemoryBus) -> list[tuple[str | None, str | None]]:
    async with bus.receiver(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, dead_letter=True) as receiver:
        messages = await receiver.receive(1000, 0.2)
        for message in messages:
            await receiver.abandon(message)  # left where it was, for whoever reads the queue next
    return [(message.dead_letter_reason, message.dead_letter_description) for message in messages]


# -- batching -----------------------------------------------------------------------------------------------------


async def test_full_batches_go_as_one_request_each_and_the_rest_once_nothing_more_comes() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    await publish_scored(bus, (scored_indicator(n) for n in range(25)))
    service = a_service(bus, gateway)
    async with running(service):
        # The age limit is ten minutes: the last 5 go because the upstream is idle, not because they aged.
        await eventually(lambda: depth(bus) == 0, within=30, what="every message settled")
    assert [request.objects for request in gateway.writes()] == [10, 10, 5]
    assert {request.path for request in gateway.writes()} == {INTELLIGENCE_PATH}
    counts = counts_of(service)
    assert (counts.batches, counts.completed, counts.published) == (3, 25, 25)


async def test_while_the_upstream_still_has_work_a_partial_batch_keeps_filling() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    backlog = OutgoingMessage(body=b"{}", message_id="upstream-work")
    await bus.publish(INDICATORS_TOPIC, [backlog])  # the scorer has not got to it yet
    await publish_scored(bus, (scored_indicator(n) for n in range(3)))
    async with running(a_service(bus, gateway)):
        await asyncio.sleep(1.0)  # many quiet periods (0.1 s each)
        assert gateway.writes() == []
        async with bus.receiver(INDICATORS_TOPIC, "scorer") as scorer:
            (work,) = await scorer.receive(1, 1.0)
            await scorer.complete(work)
        await eventually(lambda: depth(bus) == 0, what="the batch went once the upstream was idle")
    assert [request.objects for request in gateway.writes()] == [3]


async def test_what_we_own_is_read_while_a_batch_gathers_and_not_again_when_it_goes_soon_after() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    await bus.publish(INDICATORS_TOPIC, [OutgoingMessage(body=b"{}", message_id="upstream-work")])
    await publish_scored(bus, (scored_indicator(n) for n in range(3)))
    async with running(a_service(bus, gateway)):
        await eventually(
            lambda: {Operation.SEARCH, Operation.WHITELIST} <= {request.operation for request in gateway.requests},
            what="ownership and the whitelist read while the batch still gathers",
        )
        assert gateway.writes() == []
        async with bus.receiver(INDICATORS_TOPIC, "scorer") as scorer:
            (work,) = await scorer.receive(1, 1.0)
            await scorer.complete(work)
        await eventually(lambda: depth(bus) == 0, what="the batch went once the upstream was idle")
    # One read ahead, the upsert, and its confirmation: the batch did not read again before its request.
    operations = [request.operation for request in gateway.requests if request.operation is not Operation.WHITELIST]
    assert operations == [Operation.SEARCH, Operation.UPSERT, Operation.SEARCH]


async def test_a_read_ahead_that_fails_is_not_repeated_and_the_batch_reads_again_when_it_goes() -> None:
    bus = MemoryBus()
    unavailable = Answer(Outcome.UNAVAILABLE, "ThreatStream answered 503")
    double = ThreatStreamDouble()
    searches_failing = [True]

    def answer(request: ThreatStreamRequest) -> Answer:
        if request.operation is Operation.SEARCH and searches_failing[0]:
            return unavailable
        return double(request)

    gateway = FakeGateway(answer=answer)
    await bus.publish(INDICATORS_TOPIC, [OutgoingMessage(body=b"{}", message_id="upstream-work")])
    await publish_scored(bus, (scored_indicator(n) for n in range(3)))
    async with running(a_service(bus, gateway)):
        await eventually(lambda: bool(gateway.requests), what="the read ahead")
        await asyncio.sleep(0.5)  # many quiet periods (0.1 s each): a failed read ahead is not tried again
        assert [request.operation for request in gateway.requests].count(Operation.SEARCH) == 1
        searches_failing[0] = False
        async with bus.receiver(INDICATORS_TOPIC, "scorer") as scorer:
            (work,) = await scorer.receive(1, 1.0)
            await scorer.complete(work)
        await eventually(lambda: depth(bus) == 0, what="the batch went once the upstream was idle")
    operations = [request.operation for request in gateway.requests if request.operation is not Operation.WHITELIST]
    assert operations == [Operation.SEARCH, Operation.SEARCH, Operation.UPSERT, Operation.SEARCH]
    assert len(gateway.values()) == 3


async def test_a_partial_batch_goes_when_its_oldest_message_is_old_enough() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    await bus.publish(INDICATORS_TOPIC, [OutgoingMessage(body=b"{}", message_id="upstream-work")])
    await publish_scored(bus, (scored_indicator(n) for n in range(3)))
    async with running(a_service(bus, gateway, batch_size=1000, batch_age_seconds=0.3)):
        await eventually(lambda: depth(bus) == 0)
    assert [request.objects for request in gateway.writes()] == [3]


async def test_messages_are_completed_only_after_threatstream_answers() -> None:
    bus, release = MemoryBus(), asyncio.Event()

    class SlowGateway(FakeGateway):
        async def send(self, request: ThreatStreamRequest) -> Answer:
            self.requests.append(request)
            if request.method != "GET":
                await release.wait()
            return self.answer(request)

    gateway = SlowGateway()
    await publish_scored(bus, (scored_indicator(n) for n in range(10)))
    async with running(a_service(bus, gateway)):
        await eventually(lambda: len(gateway.writes()) == 1)
        await asyncio.sleep(0.05)
        assert depth(bus) == 10  # held under lock while the request is in flight
        release.set()
        await eventually(lambda: depth(bus) == 0)


async def test_messages_about_one_observable_become_one_object() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    target = observable(ObservableType.DOMAIN)
    versions = [
        scored_indicator(
            target,
            None,
            time_generated=INDICATOR_TIME.replace(hour=hour),
            confidence=hour,
            upstream_version=f"v{hour}",
        )
        for hour in (3, 9, 5)
    ]
    await publish_scored(bus, versions)
    service = a_service(bus, gateway, batch_size=3)
    async with running(service):
        await eventually(lambda: depth(bus) == 0)
    (request,) = gateway.writes()
    assert request.json_body is not None
    assert [obj["confidence"] for obj in request.json_body["objects"]] == [9]
    assert (counts_of(service).completed, counts_of(service).coalesced) == (3, 2)


# -- what ThreatStream answers ------------------------------------------------------------------------------------


async def test_one_poison_item_in_a_thousand_is_isolated_and_dead_lettered() -> None:
    bus = MemoryBus()
    poison = scored_indicator(417)
    gateway = FakeGateway(answer=rejecting({poison.observable.value}))
    await publish_scored(bus, (scored_indicator(n) for n in range(1000)))
    service = a_service(bus, gateway, batch_size=1000)
    async with running(service):
        await eventually(lambda: depth(bus) == 0 and depth(bus, dead_letter=True) == 1)
    extra = len(gateway.writes()) - 1
    assert extra <= 2 * math.ceil(math.log2(1000))
    delivered = [
        value
        for request in gateway.writes()
        if poison.observable.value not in request_values(request)
        for value in request_values(request)
    ]
    assert sorted(delivered) == sorted(scored_indicator(n).observable.value for n in range(1000) if n != 417)
    ((reason, description),) = await dead_letters(bus)
    assert reason == REJECTED_REASON
    assert description is not None
    assert poison.observable.value in description
    assert (counts_of(service).dead_lettered, counts_of(service).rejected) == (1, 1)


async def test_an_unavailable_threatstream_gets_the_messages_redelivered() -> None:
    bus = MemoryBus()
    gateway = FakeGateway(fail_next=[Answer(Outcome.UNAVAILABLE, "kept answering 503", 503)])
    await publish_scored(bus, (scored_indicator(n) for n in range(10)))
    service = a_service(bus, gateway)
    async with running(service):
        await eventually(lambda: len(gateway.writes()) == 2 and depth(bus) == 0)
    first, second = gateway.writes()
    assert sorted(request_values(first)) == sorted(request_values(second))
    assert (counts_of(service).abandoned, counts_of(service).completed) == (10, 10)


async def test_a_refusal_pauses_the_consumer_keeps_the_batch_and_retries_it() -> None:
    bus = MemoryBus()
    refused = Answer(Outcome.REFUSED, "ThreatStream refused the API key (401): check …", 401)
    gateway = FakeGateway(fail_next=[refused, refused])
    await publish_scored(bus, (scored_indicator(n) for n in range(10)))
    service = a_service(bus, gateway)
    async with running(service):
        await eventually(lambda: len(gateway.writes()) >= 1)
        assert await service.readiness[0]() == refused.detail
        await eventually(lambda: depth(bus) == 0)
    assert len(gateway.writes()) == 3
    assert request_values(gateway.writes()[0]) == request_values(gateway.writes()[2])
    assert counts_of(service).abandoned == 0
    assert await service.readiness[0]() is None


# -- missing permissions (issue 10 item 2) ------------------------------------------------------------------------


def forbidden(permission: Permission) -> Answer:
    detail = f"the ThreatStream user lacks the '{permission}' permission, which … needs"
    return Answer(Outcome.FORBIDDEN, detail, 403, permission=permission)


async def test_a_missing_permission_is_said_once_and_its_messages_are_kept_as_dead_letters() -> None:
    bus = MemoryBus()
    threatstream = ThreatStreamDouble(
        owned=[search_object(7, "10.0.0.1", "mal_ip"), search_object(8, "10.0.0.2", "mal_ip")],
        write=lambda request: (
            forbidden(Permission.APPROVE_INTEL)
            if request.operation is Operation.UPDATE
            else threatstream_accepting(request)
        ),
    )
    gateway = FakeGateway(answer=threatstream)
    expiries = [scored_indicator(n, None, verdict=Verdict.EXPIRE) for n in (1, 2)]
    await publish_scored(bus, [*expiries, scored_indicator(3), scored_indicator(4)])
    service = a_service(bus, gateway, mode=PublishMode.APPROVAL)
    async with running(service):
        await eventually(lambda: depth(bus) == 0)
        readiness = await service.readiness[0]()
    # One change by id was tried; the batch's other one needing the same permission was not sent.
    assert [request.operation for request in gateway.writes()] == [Operation.UPDATE, Operation.IMPORT]
    assert readiness is not None
    assert "'Approve Intel'" in readiness
    assert PERMISSION_REASON in readiness
    assert [reason for reason, _ in await dead_letters(bus)] == [PERMISSION_REASON] * 2
    counts = counts_of(service)
    assert (counts.missing_permissions, counts.completed, counts.dead_lettered) == (("Approve Intel",), 2, 2)


async def test_a_granted_permission_clears_the_warning() -> None:
    bus = MemoryBus()
    gateway = FakeGateway(fail_next=[forbidden(Permission.APPROVE_INTEL)])
    await publish_scored(bus, [scored_indicator(1)])
    service = a_service(bus, gateway)
    async with running(service):
        await eventually(lambda: depth(bus) == 0)
        assert await service.readiness[0]() is not None
        await publish_scored(bus, [scored_indicator(2)])
        await eventually(lambda: depth(bus) == 0 and counts_of(service).completed == 1)
        assert await service.readiness[0]() is None
    assert counts_of(service).missing_permissions == ()


# -- lifecycle ----------------------------------------------------------------------------------------------------


async def test_an_expiry_of_what_we_never_published_sends_nothing() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    await publish_scored(bus, [scored_indicator(n, None, verdict=Verdict.EXPIRE) for n in range(5)])
    service = a_service(bus, gateway)
    async with running(service):
        await eventually(lambda: depth(bus) == 0)
    assert gateway.writes() == []
    assert counts_of(service).skipped == {"nothing_of_ours_to_expire": 5}


async def test_the_deactivations_of_a_batch_are_in_flight_together_once_the_first_proved_the_permission() -> None:
    bus = MemoryBus()
    threatstream = ThreatStreamDouble(owned=[search_object(n, f"10.0.0.{n}", "mal_ip") for n in range(1, 7)])
    gateway = FakeGateway(answer=threatstream)
    await publish_scored(bus, [scored_indicator(n, None, verdict=Verdict.EXPIRE) for n in range(1, 7)])
    service = a_service(bus, gateway)
    async with running(service):
        await eventually(lambda: depth(bus) == 0)
    assert [request.operation for request in gateway.writes()] == [Operation.UPDATE] * 6
    assert gateway.peak_in_flight == 5  # the first alone, then the other five at once
    assert counts_of(service).deactivated == 6


async def test_an_older_revision_that_comes_back_after_a_newer_one_is_not_applied() -> None:
    """The deployment engineer's case: a dead publisher's older publication, redelivered after its successor
    applied the revocation, must not revive the observable."""
    bus = MemoryBus()
    threatstream = ThreatStreamDouble(owned=[search_object(7, "10.0.0.1", "mal_ip")])
    gateway = FakeGateway(answer=threatstream)
    older = scored_indicator(1, time_generated=INDICATOR_TIME, upstream_version="v1")
    revoked = scored_indicator(
        1, None, verdict=Verdict.EXPIRE, time_generated=INDICATOR_TIME + timedelta(days=7), upstream_version="v2"
    )
    await publish_scored(bus, [revoked])
    service = a_service(bus, gateway)
    async with running(service):
        await eventually(lambda: depth(bus) == 0)
        threatstream.owned = [search_object(7, "10.0.0.1", "mal_ip", status="inactive", update_id=3000)]
        await publish_scored(bus, [older])
        await eventually(lambda: depth(bus) == 0 and counts_of(service).completed == 2)
    assert [(request.path, request.json_body) for request in gateway.writes()] == [
        ("/v2/intelligence/7/", {"status": "inactive"})
    ]
    assert counts_of(service).skipped == {"stale_revision": 1}


async def test_approval_mode_follows_each_session_to_its_end_and_dead_letters_what_it_rejected() -> None:
    bus = MemoryBus()
    whitelisted = scored_indicator(2)
    threatstream = ThreatStreamDouble(whitelist={whitelisted.observable.value}, processing_polls=2, session_end="done")
    gateway = FakeGateway(answer=threatstream)
    await publish_scored(bus, [scored_indicator(1), whitelisted, scored_indicator(3)])
    service = a_service(bus, gateway, mode=PublishMode.APPROVAL)
    async with running(service):
        await eventually(lambda: depth(bus) == 0, within=30)
    assert [(reason, description) for reason, description in await dead_letters(bus)] == [
        (REJECTED_REASON, WHITELISTED)
    ]
    counts = counts_of(service)
    assert (counts.sessions_opened, counts.sessions_by_status) == (1, {"done": 1})
    assert (counts.session_observables_accepted, counts.session_observables_rejected) == (2, 1)
    assert (counts.completed, counts.rejected) == (2, 1)
    assert threatstream.polls == 3  # processing, processing, done: then no more


async def test_a_session_not_finished_within_the_bound_is_taken_as_accepted() -> None:
    bus = MemoryBus()
    threatstream = ThreatStreamDouble(processing_polls=1000)
    gateway = FakeGateway(answer=threatstream)
    await publish_scored(bus, [scored_indicator(1)])
    service = a_service(bus, gateway, mode=PublishMode.APPROVAL, publisher_session_follow_seconds=2.5)
    async with running(service):
        await eventually(lambda: depth(bus) == 0, within=30)
    assert 1 <= threatstream.polls <= 3  # paced: 1 s, then 1.5 s
    assert (counts_of(service).sessions_by_status, counts_of(service).completed) == ({"unfinished": 1}, 1)


async def test_approval_mode_sends_one_import_session_for_observables_of_every_kind() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    batch = [*(scored_indicator(observable(kind)) for kind in ObservableType), *(scored_indicator(n) for n in range(3))]
    await publish_scored(bus, batch)
    async with running(a_service(bus, gateway, mode=PublishMode.APPROVAL, batch_size=20)):
        await eventually(lambda: depth(bus) == 0)
    (request,) = gateway.writes()
    assert (request.path, request.objects) == (IMPORT_PATH, len(batch))
    assert "ipv6_mapping" not in request.form


# -- poison (issue 13) ----------------------------------------------------------------------------------------------


async def test_a_year_9999_valid_until_in_approval_mode_is_published_and_nothing_stops() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    forever = scored_indicator(1, valid_until=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    await publish_scored(bus, [forever, scored_indicator(2)])
    service = a_service(bus, gateway, mode=PublishMode.APPROVAL)
    async with running(service):
        await eventually(lambda: depth(bus) == 0)
    latest = max(datetime.fromisoformat(request.form["expiration_ts"]) for request in gateway.writes())
    # Clamped to ten years from now: no overflow, and a date ThreatStream takes.
    assert timedelta(days=3649) < latest - datetime.now(UTC) <= timedelta(days=3650)
    assert counts_of(service).completed == 2


async def test_a_message_that_cannot_be_mapped_is_dead_lettered_and_the_rest_flows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    poison = scored_indicator(13)
    real = intel_object

    def mapping(scored: IndicatorScored, *args: Any) -> Any:
        if scored.observable == poison.observable:
            raise OverflowError("date value out of range")
        return real(scored, *args)

    monkeypatch.setattr("tibridge.publisher.planning.intel_object", mapping)
    await publish_scored(bus, [scored_indicator(1), poison, scored_indicator(2)])
    service = a_service(bus, gateway)
    async with running(service):
        await eventually(lambda: depth(bus) == 0)
    assert [(reason, description) for reason, description in await dead_letters(bus)] == [
        (UNMAPPABLE_REASON, "the publisher could not map it to ThreatStream (OverflowError: date value out of range)")
    ]
    assert sorted(gateway.values()) == sorted(scored_indicator(n).observable.value for n in (1, 2))


async def test_an_unexpected_failure_mid_batch_gives_the_batch_back_and_the_loop_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    failures = [RuntimeError("surprise")]
    real = planning.Planner.plan

    def plan(self: planning.Planner, *args: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(self, *args)

    monkeypatch.setattr(planning.Planner, "plan", plan)
    await publish_scored(bus, (scored_indicator(n) for n in range(3)))
    service = a_service(bus, gateway)
    async with running(service):
        await eventually(lambda: depth(bus) == 0)
    assert (counts_of(service).abandoned, counts_of(service).completed) == (3, 3)


async def test_a_dry_run_writes_the_requests_and_completes_the_messages(tmp_path: Path) -> None:
    bus, target = MemoryBus(), tmp_path / "dry-run.jsonl"
    settings = load_settings(
        PublisherSettings,
        bus="memory",
        publisher_dry_run_file=target,
        publisher_batch_size=5,
        publisher_max_in_flight=10,
    )
    await publish_scored(bus, [*(scored_indicator(n) for n in range(7)), scored_indicator(9, verdict=Verdict.EXPIRE)])
    async with contextlib.AsyncExitStack() as resources:
        service = await build(settings, bus, resources, SystemClock())
        async with running(service):
            await eventually(lambda: depth(bus) == 0, within=30)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert sum(len(line["body"]["datatext"].split("\n")) for line in lines) == 7
    assert {line["path"] for line in lines} == {IMPORT_PATH}  # the dry run holds nothing to expire
    assert counts_of(service).completed == 8
