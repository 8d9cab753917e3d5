"""The publisher dies after ThreatStream accepted a batch and before a single message was completed; a new
one takes over. ThreatStream must end up with every observable exactly once — and when the successor applied a
newer revision meanwhile, the dead publisher's older one must not be applied over it when its lock lapses."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

import httpx
import pytest

from tests.fixtures.publisher import (
    MIXED_SESSIONS_PER_BATCH,
    depth,
    mixed_indicators,
    publish_scored,
    running,
    sandbox_objects,
    sandbox_settings,
    sandbox_stats,
    scored_indicator,
)
from tests.fixtures.runtime import eventually
from tests.fixtures.sandbox import SandboxFactory
from tests.fixtures.servicebus import with_lock_duration
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import BusUnavailable, OutgoingMessage, ReceivedMessage, Receiver
from tibridge.common.clock import SystemClock
from tibridge.common.contracts import Verdict
from tibridge.common.topology import TOPOLOGY
from tibridge.publisher.app import assemble, build, consumer_options, gateway_for
from tibridge.publisher.payloads import ThreatStreamRequest
from tibridge.publisher.threatstream import Answer, Gateway, Outcome
from tibridge.publisher.worker import PublisherCounts
from tibridge.sandbox import SandboxServer

MESSAGES = 1000
# Short, so the dead publisher's locks lapse soon; long enough that the successor, holding 1,000 messages on a
# loaded 2-core machine, renews them in time (a lapse there would count each message twice).
LOCK = timedelta(seconds=6)
REVISIONS = 200
REVISION_LOCK = timedelta(seconds=10)


class Death:
    """Once the process is dead, nothing it does reaches the bus or ThreatStream any more."""

    def __init__(self) -> None:
        self.happened = asyncio.Event()

    def check(self) -> None:
        if self.happened.is_set():
            raise BusUnavailable("the publisher process is dead")


class DyingReceiver:
    """Dies at the first completion: ThreatStream has answered, and no message is settled."""

    def __init__(self, inner: Receiver, death: Death) -> None:
        self._inner = inner
        self._death = death

    async def receive(
        self, max_messages: int, max_wait: float, *, until: asyncio.Event | None = None
    ) -> list[ReceivedMessage]:
        self._death.check()
        return await self._inner.receive(max_messages, max_wait, until=until)

    async def complete(self, message: ReceivedMessage) -> None:
        self._death.happened.set()
        self._death.check()

    async def abandon(self, message: ReceivedMessage) -> None:
        self._death.check()
        await self._inner.abandon(message)

    async def dead_letter(self, message: ReceivedMessage, reason: str, description: str) -> None:
        self._death.check()
        await self._inner.dead_letter(message, reason, description)

    async def renew_lock(self, message: ReceivedMessage) -> datetime:
        self._death.check()
        return await self._inner.renew_lock(message)

    async def close(self) -> None:
        await self._inner.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class DyingBus:
    def __init__(self, inner: MemoryBus, death: Death) -> None:
        self._inner = inner
        self._death = death

    async def publish(self, topic: str, messages: Sequence[OutgoingMessage]) -> None:
        await self._inner.publish(topic, messages)

    def receiver(self, topic: str, subscription: str, *, dead_letter: bool = False, prefetch: int = 0) -> Receiver:
        inner = self._inner.receiver(topic, subscription, dead_letter=dead_letter, prefetch=prefetch)
        return DyingReceiver(inner, self._death)

    async def check(self) -> None:
        self._death.check()

    async def has_pending(self, topic: str, subscription: str) -> bool:
        self._death.check()
        return await self._inner.has_pending(topic, subscription)

    async def close(self) -> None:
        return None


class DyingGateway:
    def __init__(self, inner: Gateway, death: Death) -> None:
        self._inner = inner
        self._death = death
        self.counts = inner.counts

    async def send(self, request: ThreatStreamRequest) -> Answer:
        if self._death.happened.is_set():
            return Answer(Outcome.UNAVAILABLE, "the publisher process is dead")
        return await self._inner.send(request)


async def approve_every_session(server: SandboxServer, sessions: int) -> None:
    config = server.config
    headers = {
        "Authorization": f"apikey {config.threatstream_username}:{config.threatstream_api_key.get_secret_value()}"
    }
    async with httpx.AsyncClient(base_url=server.endpoints.threatstream, headers=headers, timeout=10) as client:
        for session in range(1, sessions + 1):
            (await client.patch(f"/v1/importsession/{session}/approve_all/")).raise_for_status()
    # Approving takes ThreatStream a moment too (`approving`, then `approved`).
    for _ in range(100):
        if (await sandbox_stats(server))["threatstream"]["pending_approval"] == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the approved sessions did not become active")


@pytest.mark.parametrize(("mode", "auto_approve"), [("direct", False), ("approval", True), ("approval", False)])
async def test_a_crash_between_answer_and_completion_creates_no_duplicate(
    sandbox_factory: SandboxFactory, mode: str, auto_approve: bool
) -> None:
    indicators = mixed_indicators(MESSAGES)
    bus = MemoryBus(with_lock_duration(TOPOLOGY, LOCK))
    await publish_scored(bus, indicators)
    death = Death()
    async with sandbox_factory(indicators=0) as server, contextlib.AsyncExitStack() as resources:
        settings = sandbox_settings(
            server, publisher_mode=mode, publisher_auto_approve=auto_approve, publisher_batch_age_seconds=30
        )
        gateway = DyingGateway(gateway_for(settings, resources, SystemClock()), death)
        doomed = assemble(settings, DyingBus(bus, death), SystemClock(), consumer_options(settings), gateway=gateway)
        async with running(doomed):
            await asyncio.wait_for(death.happened.wait(), timeout=30)
        before = (await sandbox_stats(server))["threatstream"]
        writes = sum(n for endpoint, n in before["requests"].items() if endpoint in ("import", "upsert"))
        batch = 1 if mode == "direct" else MIXED_SESSIONS_PER_BATCH
        assert writes == batch, "the first batch was answered, then the process died"
        assert doomed.snapshot(PublisherCounts).completed == 0
        assert depth(bus) == MESSAGES

        successor = await build(settings, bus, resources, SystemClock())
        async with running(successor):
            await eventually(lambda: depth(bus) == 0, within=60, what="the successor settled every message")
        if not auto_approve and mode == "approval":
            await approve_every_session(server, (await sandbox_stats(server))["threatstream"]["import_sessions"])
        after = (await sandbox_stats(server))["threatstream"]
        held = await sandbox_objects(server)

    assert after["duplicates_created"] == 0
    assert Counter((obj["value"], obj["itype"]) for obj in held).most_common(1)[0][1] == 1
    assert {obj["value"] for obj in held} == {indicator.observable.value for indicator in indicators}
    assert {obj["status"] for obj in held} == {"active"}
    assert depth(bus, dead_letter=True) == 0
    counts = successor.snapshot(PublisherCounts)
    assert counts.completed == MESSAGES
    if mode == "approval" and not auto_approve:
        # What the dead publisher imported still waits for an analyst: the successor imports it again, which
        # updates rather than duplicates once both sessions are approved.
        assert after["updated"] > 0
    else:
        # What the dead publisher delivered is in ThreatStream, unchanged: the successor sends none of it again.
        assert counts.skipped.get("unchanged", 0) > 0
        assert counts.published + counts.skipped["unchanged"] == len(held)


async def test_an_older_revision_held_by_a_dead_publisher_is_not_applied_over_the_newer_one(
    sandbox_factory: SandboxFactory,
) -> None:
    """The deployment engineer's case: the successor starts at once, applies a revocation while the dead
    publisher's older publication of the same observables is still locked; when that lock lapses and the
    older revision comes back, the observables must stay inactive."""
    publications = mixed_indicators(REVISIONS)
    revocations = [
        scored_indicator(
            one.observable,
            None,
            verdict=Verdict.EXPIRE,
            time_generated=one.indicator.time_generated + timedelta(days=7),
            upstream_version=f"{one.indicator.upstream_version}-revoked",
        )
        for one in publications
    ]
    # Locked long enough for the successor to apply every revocation first.
    bus = MemoryBus(with_lock_duration(TOPOLOGY, REVISION_LOCK))
    await publish_scored(bus, publications)
    death = Death()
    async with sandbox_factory(indicators=0) as server, contextlib.AsyncExitStack() as resources:
        settings = sandbox_settings(server, publisher_mode="direct")
        gateway = DyingGateway(gateway_for(settings, resources, SystemClock()), death)
        doomed = assemble(settings, DyingBus(bus, death), SystemClock(), consumer_options(settings), gateway=gateway)
        async with running(doomed):
            await asyncio.wait_for(death.happened.wait(), timeout=30)
        assert {obj["status"] for obj in await sandbox_objects(server)} == {"active"}, "the older one was applied"
        await publish_scored(bus, revocations)
        successor = await build(settings, bus, resources, SystemClock())
        async with running(successor):
            # At once, not once the locks lapsed: the revocations are taken first, the old revisions after.
            await eventually(lambda: depth(bus) == 0, within=60, what="the successor settled every message")
        held = await sandbox_objects(server)
        stats = (await sandbox_stats(server))["threatstream"]
    counts = successor.snapshot(PublisherCounts)
    assert {obj["status"] for obj in held} == {"inactive"}
    assert (stats["created"], stats["duplicates_created"]) == (REVISIONS, 0)
    # No old revision was sent again: each was either taken after its revocation (stale) or, taken before it,
    # found already in ThreatStream as it says (unchanged). On a loaded machine a lock may lapse and a message
    # come round twice, which changes nothing.
    assert counts.published == 0
    assert "upsert" not in counts.requests_by_operation
    assert counts.skipped.get("stale_revision", 0) > 0
    assert counts.skipped.get("stale_revision", 0) + counts.skipped.get("unchanged", 0) >= REVISIONS
    assert (counts.deactivated, counts.completed) == (REVISIONS, 2 * REVISIONS)
