"""The publisher on the in-memory bus with a scripted ThreatStream: batching, settlement, failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from pathlib import Path

from tests.fixtures.publisher import (
    FakeGateway,
    depth,
    fast_consumer,
    observable,
    publish_scored,
    publisher_settings,
    rejecting,
    request_values,
    running,
    scored_indicator,
)
from tests.fixtures.runtime import eventually
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.clock import SystemClock
from tibridge.common.contracts import ObservableType, Verdict
from tibridge.common.runtime import Service
from tibridge.common.settings import load_settings
from tibridge.common.topology import PUBLISHER_SUBSCRIPTION, SCORED_TOPIC
from tibridge.publisher.app import assemble, build
from tibridge.publisher.payloads import IMPORT_PATH, UPSERT_PATH, ThreatStreamRequest
from tibridge.publisher.settings import PublisherSettings, PublishMode
from tibridge.publisher.threatstream import Answer, Outcome
from tibridge.publisher.worker import REJECTED_REASON, PublisherCounts


def a_service(
    bus: MemoryBus,
    gateway: FakeGateway,
    *,
    mode: PublishMode = PublishMode.DIRECT,
    batch_size: int = 10,
    batch_age_seconds: float = 60.0,
) -> Service:
    settings = publisher_settings(
        publisher_mode=mode,
        publisher_batch_size=batch_size,
        publisher_batch_age_seconds=batch_age_seconds,
        threatstream_probe_interval_seconds=0.05,
    )
    return assemble(settings, bus, SystemClock(), fast_consumer(settings), gateway=gateway)


def counts_of(service: Service) -> PublisherCounts:
    return service.snapshot(PublisherCounts)


async def test_full_batches_go_out_as_one_request_each_and_the_rest_on_stop() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    await publish_scored(bus, (scored_indicator(n) for n in range(25)))
    service = a_service(bus, gateway)
    async with running(service):
        await eventually(lambda: len(gateway.requests) == 2 and depth(bus) == 5)
    assert [request.objects for request in gateway.requests] == [10, 10, 5]
    assert {request.path for request in gateway.requests} == {UPSERT_PATH}
    assert depth(bus) == 0
    counts = counts_of(service)
    assert (counts.batches, counts.completed, counts.objects_sent) == (3, 25, {"publish": 25})


async def test_messages_are_completed_only_after_threatstream_answers() -> None:
    bus, release = MemoryBus(), asyncio.Event()
    accepted = Answer(Outcome.ACCEPTED, "ok", 202)

    class SlowGateway(FakeGateway):
        async def send(self, request: ThreatStreamRequest) -> Answer:
            self.requests.append(request)
            await release.wait()
            return accepted

    gateway = SlowGateway()
    await publish_scored(bus, (scored_indicator(n) for n in range(10)))
    async with running(a_service(bus, gateway)):
        await eventually(lambda: len(gateway.requests) == 1)
        await asyncio.sleep(0.05)
        assert depth(bus) == 10  # held under lock while the request is in flight
        release.set()
        await eventually(lambda: depth(bus) == 0)


async def test_a_batch_goes_out_when_its_oldest_message_is_old_enough() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    await publish_scored(bus, (scored_indicator(n) for n in range(3)))
    async with running(a_service(bus, gateway, batch_size=1000, batch_age_seconds=0.1)):
        await eventually(lambda: depth(bus) == 0)
        assert [request.objects for request in gateway.requests] == [3]


async def test_one_poison_item_in_a_thousand_is_isolated_and_dead_lettered() -> None:
    bus = MemoryBus()
    poison = scored_indicator(417)
    gateway = FakeGateway(answer=rejecting({poison.observable.value}))
    await publish_scored(bus, (scored_indicator(n) for n in range(1000)))
    service = a_service(bus, gateway, batch_size=1000)
    async with running(service):
        await eventually(lambda: depth(bus) == 0 and depth(bus, dead_letter=True) == 1)
    extra = len(gateway.requests) - 1
    assert extra <= 2 * math.ceil(math.log2(1000))
    delivered = [
        value
        for request, answer in zip(gateway.requests, map(gateway.answer, gateway.requests), strict=True)
        if answer.outcome is Outcome.ACCEPTED
        for value in request_values(request)
    ]
    assert sorted(delivered) == sorted(scored_indicator(n).observable.value for n in range(1000) if n != 417)
    async with bus.receiver(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, dead_letter=True) as dead:
        (message,) = await dead.receive(10, 0.1)
    assert message.dead_letter_reason == REJECTED_REASON
    assert message.dead_letter_description is not None
    assert poison.observable.value in message.dead_letter_description
    assert counts_of(service).dead_lettered == 1


async def test_an_unavailable_threatstream_gets_the_messages_redelivered() -> None:
    bus = MemoryBus()
    gateway = FakeGateway(fail_next=[Answer(Outcome.UNAVAILABLE, "kept answering 503", 503)])
    await publish_scored(bus, (scored_indicator(n) for n in range(10)))
    service = a_service(bus, gateway)
    async with running(service):
        await eventually(lambda: len(gateway.requests) == 2 and depth(bus) == 0)
    assert sorted(request_values(gateway.requests[0])) == sorted(request_values(gateway.requests[1]))
    assert (counts_of(service).abandoned, counts_of(service).completed) == (10, 10)


async def test_a_refusal_pauses_the_consumer_keeps_the_batch_and_retries_it() -> None:
    bus = MemoryBus()
    refused = Answer(Outcome.REFUSED, "ThreatStream denied the request (403): needs 'Approve Intel'", 403)
    gateway = FakeGateway(fail_next=[refused, refused])
    await publish_scored(bus, (scored_indicator(n) for n in range(10)))
    service = a_service(bus, gateway)
    async with running(service):
        await eventually(lambda: len(gateway.requests) >= 1)
        assert await service.readiness[0]() == refused.detail
        await eventually(lambda: depth(bus) == 0)
    assert len(gateway.requests) == 3
    assert request_values(gateway.requests[0]) == request_values(gateway.requests[2])
    assert counts_of(service).abandoned == 0
    assert await service.readiness[0]() is None


async def test_messages_about_one_observable_become_one_object() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    target = observable(ObservableType.DOMAIN)
    versions = [
        scored_indicator(
            target,
            time_generated=scored_indicator(0).indicator.time_generated.replace(hour=hour),
            confidence=hour,
            upstream_version=f"v{hour}",
            reputation=None,
        )
        for hour in (3, 9, 5)
    ]
    await publish_scored(bus, versions)
    service = a_service(bus, gateway, batch_size=3)
    async with running(service):
        await eventually(lambda: depth(bus) == 0)
    (request,) = gateway.requests
    assert request.json_body is not None
    assert [obj["confidence"] for obj in request.json_body["objects"]] == [9]
    assert (counts_of(service).completed, counts_of(service).coalesced) == (3, 2)


async def test_expiries_and_publications_never_share_a_request() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    await publish_scored(bus, [scored_indicator(1), scored_indicator(2, verdict=Verdict.EXPIRE), scored_indicator(3)])
    async with running(a_service(bus, gateway, batch_size=1000, batch_age_seconds=0.05)):
        await eventually(lambda: depth(bus) == 0)
    statuses = sorted(
        sorted({obj["status"] for obj in request.json_body["objects"]})
        for request in gateway.requests
        if request.json_body is not None
    )
    assert statuses == [["active"], ["inactive"]]


async def test_approval_mode_sends_one_import_session_for_observables_of_every_kind() -> None:
    bus, gateway = MemoryBus(), FakeGateway()
    batch = [
        *(scored_indicator(n) for n in range(6)),
        *(scored_indicator(observable(kind)) for kind in (ObservableType.DOMAIN, ObservableType.URL)),
    ]
    await publish_scored(bus, batch)
    async with running(a_service(bus, gateway, mode=PublishMode.APPROVAL, batch_size=8)):
        await eventually(lambda: depth(bus) == 0)
    [request] = gateway.requests
    assert request.path == IMPORT_PATH
    assert request.objects == 8
    mappings = {name: value for name, value in request.form.items() if name.endswith("_mapping")}
    assert mappings == {"ip_mapping": "mal_ip", "domain_mapping": "mal_domain", "url_mapping": "mal_url"}


async def test_a_dry_run_writes_the_requests_and_completes_the_messages(tmp_path: Path) -> None:
    bus, target = MemoryBus(), tmp_path / "dry-run.jsonl"
    settings = load_settings(
        PublisherSettings,
        bus="memory",
        publisher_dry_run_file=target,
        publisher_batch_size=5,
        publisher_batch_age_seconds=0.05,
        publisher_max_in_flight=10,
    )
    await publish_scored(bus, (scored_indicator(n) for n in range(7)))
    async with contextlib.AsyncExitStack() as resources:
        service = await build(settings, bus, resources, SystemClock())
        async with running(service):
            await eventually(lambda: depth(bus) == 0)
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert sum(len(line["body"]["datatext"].split("\n")) for line in lines) == 7
    assert {line["path"] for line in lines} == {IMPORT_PATH}
    assert counts_of(service).requests == len(lines)
