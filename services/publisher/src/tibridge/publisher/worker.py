"""The publisher's handler: hold scored messages in batches, send each batch, settle by ThreatStream's answer.

`handle` only adds a message to the batcher; a delivery loop sends the batches that are full or old enough,
one request at a time, and settles their messages by the answer (the consumer renews their locks
meanwhile):
* accepted → complete every message the request stands for;
* rejected (400 and other content errors) → split the request in halves and send them, recursively, until
  the offending items stand alone; an offending single item is dead-lettered with ThreatStream's message;
* unavailable (429/5xx/timeouts past the retry budget) → abandon the messages, the bus redelivers them;
* refused (401/403, wrong URL) → keep the request and its messages, report not ready and pause the
  consumer (`DependencyUnavailable`), and try the same request again every probe interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics

from tibridge.common.aio import first_of
from tibridge.common.bus.port import BusError
from tibridge.common.clock import Clock
from tibridge.common.consumer import DependencyUnavailable, InFlight
from tibridge.common.contracts import IndicatorScored, Verdict
from tibridge.publisher.batching import Batch, Batcher, Entry, chunked, import_groups
from tibridge.publisher.mapping import IntelObject, MappingPolicy, intel_objects
from tibridge.publisher.payloads import ThreatStreamRequest, WireOptions, import_request, upsert_request
from tibridge.publisher.settings import PublishMode
from tibridge.publisher.threatstream import Answer, Gateway, Outcome

log = logging.getLogger(__name__)
_meter = metrics.get_meter("tibridge.publisher")
_objects = _meter.create_counter("tibridge.publisher.objects", description="Objects ThreatStream took, by verdict")
_batch_sizes = _meter.create_histogram("tibridge.publisher.batch.size", description="Messages per batch")
_requests = _meter.create_counter("tibridge.publisher.requests", description="ThreatStream requests by outcome")

REJECTED_REASON = "ThreatStreamRejected"
SETTLE_CONCURRENCY = 128

Message = InFlight[IndicatorScored]
Item = tuple[IntelObject, Entry[IndicatorScored, Message]]
_Batch = Batch[Verdict, IndicatorScored, Message]


@dataclass(frozen=True)
class PublisherOptions:
    mode: PublishMode = PublishMode.APPROVAL
    batch_size: int = 1000
    batch_age_seconds: float = 5.0
    mapping: MappingPolicy = field(default_factory=MappingPolicy)
    wire: WireOptions = field(default_factory=WireOptions)
    probe_interval_seconds: float = 30.0
    session_expiry_days: int = 7


@dataclass(frozen=True)
class Shipment:
    """One request to ThreatStream and the items it carries."""

    lane: Verdict
    request: ThreatStreamRequest
    items: tuple[Item, ...]


@dataclass
class _Settlement:
    """How an entry's messages end, once every object made from it has been answered."""

    remaining: int
    dead_letter: str | None = None
    abandon: bool = False


@dataclass
class PublisherCounts:
    batches: int = 0
    batched_messages: int = 0
    largest_batch: int = 0
    coalesced: int = 0
    split_requests: int = 0
    objects_sent: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    abandoned: int = 0
    dead_lettered: int = 0
    skipped_drop_verdicts: int = 0


class Publisher:
    payload_type = IndicatorScored

    def __init__(self, gateway: Gateway, options: PublisherOptions, clock: Clock) -> None:
        self._gateway = gateway
        self._options = options
        self._clock = clock
        self._batcher: Batcher[Verdict, IndicatorScored, Message] = Batcher(
            options.batch_size, options.batch_age_seconds
        )
        self._outbox: deque[Shipment] = deque()
        self._settlements: dict[int, _Settlement] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.blocked: str | None = None
        self.counts = PublisherCounts()

    # -- the Handler protocol -------------------------------------------------------------------------------

    async def handle(self, item: Message) -> None:
        if self.blocked is not None:
            raise DependencyUnavailable(self.blocked)
        scored = item.payload
        if scored.verdict is Verdict.DROP:
            # The subscription's rule keeps drops away; one that slips through has nothing to publish.
            self.counts.skipped_drop_verdicts += 1
            await item.complete()
            return
        due_before = self._batcher.next_due()
        full = self._batcher.add(
            scored.verdict,
            scored.observable.key,
            scored.indicator.time_generated,
            scored,
            item,
            self._clock.monotonic(),
        )
        if full or self._batcher.next_due() != due_before:
            self._wake.set()

    async def flush(self) -> None:
        """On stop: send every batch now; while ThreatStream refuses us, give everything back instead."""
        async with self._lock:
            self._enqueue(self._batcher.drain())
            while self._outbox:
                if self.blocked is not None:
                    await self._abandon_outbox()
                    break
                await self._deliver_head()

    async def probe(self) -> bool:
        """The delivery loop retries the refused request itself; the consumer resumes once it passed."""
        return self.blocked is None

    # -- the Worker protocol: the delivery loop --------------------------------------------------------------

    @property
    def name(self) -> str:
        return "publisher delivery"

    async def run(self, stop: asyncio.Event) -> None:
        """Sends due batches until `stop`; the consumer's drain then flushes what is left (`flush`)."""
        while not stop.is_set():
            if self.blocked is not None:
                await first_of(stop.wait(), self._clock.sleep(self._options.probe_interval_seconds))
                if stop.is_set():
                    return
            self._wake.clear()
            async with self._lock:
                self._enqueue(self._batcher.ready(self._clock.monotonic()))
                if self._outbox:
                    await self._deliver_head()
                    continue
                # Nothing left to try the refused request with: the next batch will tell.
                self.blocked = None
            due = self._batcher.next_due()
            timer = None if due is None else self._clock.sleep(due - self._clock.monotonic())
            await first_of(stop.wait(), self._wake.wait(), *([] if timer is None else [timer]))

    async def readiness(self) -> str | None:
        return self.blocked

    def count_summary(self) -> dict[str, Any]:
        counts = self.counts
        return {
            "requests": self._gateway.counts.requests,
            "retries": self._gateway.counts.retries,
            "split_requests": counts.split_requests,
            "objects_sent": dict(counts.objects_sent),
            "batches": counts.batches,
            "mean_batch_size": round(counts.batched_messages / counts.batches, 1) if counts.batches else 0,
            "largest_batch": counts.largest_batch,
            "coalesced": counts.coalesced,
            "completed": counts.completed,
            "abandoned": counts.abandoned,
            "dead_lettered": counts.dead_lettered,
            "skipped_drop_verdicts": counts.skipped_drop_verdicts,
            "held": self._batcher.held + sum(len(s.items) for s in self._outbox),
        }

    def _enqueue(self, batches: Sequence[_Batch]) -> None:
        for batch in batches:
            size = len(batch.messages)
            self.counts.batches += 1
            self.counts.batched_messages += size
            self.counts.largest_batch = max(self.counts.largest_batch, size)
            self.counts.coalesced += size - len(batch.entries)
            _batch_sizes.record(size, {"verdict": str(batch.lane)})
            now = self._clock.now()
            items: list[Item] = []
            for entry in batch.entries:
                objects = intel_objects(entry.payload, self._options.mapping, now)
                self._settlements[id(entry)] = _Settlement(remaining=len(objects))
                items.extend((obj, entry) for obj in objects)
            self._outbox.extend(self._shipments(batch.lane, items))

    def _shipments(self, lane: Verdict, items: Sequence[Item]) -> list[Shipment]:
        """Requests of at most batch_size objects; in approval mode one import session per group."""
        size = self._options.batch_size
        wire = self._options.wire
        if self._options.mode is PublishMode.DIRECT:
            return [
                Shipment(lane, upsert_request([obj for obj, _ in chunk], wire), tuple(chunk))
                for chunk in chunked(items, size)
            ]
        shipments = []
        for group in import_groups(items, _intel_of, self._options.session_expiry_days):
            for chunk in chunked(group.members, size):
                values = [obj.observable.value for obj, _ in chunk]
                request = import_request(group.view, values, wire, group.mappings)
                shipments.append(Shipment(lane, request, tuple(chunk)))
        return shipments

    async def _deliver_head(self) -> None:
        shipment = self._outbox[0]
        try:
            answer = await self._gateway.send(shipment.request)
        except Exception as error:
            # The delivery loop must outlive any surprise; the bus gets the messages back.
            log.exception("sending a ThreatStream request failed unexpectedly")
            answer = Answer(Outcome.UNAVAILABLE, f"unexpected {type(error).__name__}")
        _requests.add(1, {"outcome": str(answer.outcome)})
        if answer.outcome is Outcome.REFUSED:
            if self.blocked is None:
                log.error("ThreatStream refuses us; holding %d objects: %s", len(shipment.items), answer.detail)
            self.blocked = answer.detail
            return
        self.blocked = None
        self._outbox.popleft()
        if answer.outcome is Outcome.ACCEPTED:
            log.info("ThreatStream accepted %d %s objects", len(shipment.items), shipment.lane)
            self.counts.objects_sent[str(shipment.lane)] += len(shipment.items)
            _objects.add(len(shipment.items), {"verdict": str(shipment.lane)})
            await self._resolve(shipment, _mark_delivered)
        elif answer.outcome is Outcome.REJECTED:
            await self._rejected(shipment, answer)
        else:
            log.warning("giving %d objects back to the bus: %s", len(shipment.items), answer.detail)
            await self._resolve(shipment, _mark_abandon)

    async def _rejected(self, shipment: Shipment, answer: Answer) -> None:
        if len(shipment.items) == 1:
            log.warning("ThreatStream rejects one %s object; dead-lettering it: %s", shipment.lane, answer.detail)

            def mark(state: _Settlement) -> None:
                state.dead_letter = answer.detail

            await self._resolve(shipment, mark)
            return
        middle = len(shipment.items) // 2
        halves = [
            *self._shipments(shipment.lane, shipment.items[:middle]),
            *self._shipments(shipment.lane, shipment.items[middle:]),
        ]
        log.warning(
            "ThreatStream rejects a request of %d objects (%s); splitting it to find the offending ones",
            len(shipment.items),
            answer.detail,
        )
        self.counts.split_requests += len(halves)
        self._outbox.extendleft(reversed(halves))

    async def _abandon_outbox(self) -> None:
        while self._outbox:
            await self._resolve(self._outbox.popleft(), _mark_abandon)

    async def _resolve(self, shipment: Shipment, mark: Callable[[_Settlement], None]) -> None:
        finished: list[tuple[Message, _Settlement]] = []
        for _, entry in shipment.items:
            state = self._settlements[id(entry)]
            mark(state)
            state.remaining -= 1
            if state.remaining == 0:
                del self._settlements[id(entry)]
                finished.extend((message, state) for message in entry.messages)
        # Settled side by side: on Service Bus one settlement at a time waits behind the consumer's receive.
        room = asyncio.Semaphore(SETTLE_CONCURRENCY)

        async def settle(message: Message, state: _Settlement) -> None:
            async with room:
                await self._settle(message, state)

        await asyncio.gather(*(settle(message, state) for message, state in finished))

    async def _settle(self, message: Message, state: _Settlement) -> None:
        try:
            if state.dead_letter is not None:
                await message.dead_letter(REJECTED_REASON, state.dead_letter)
                self.counts.dead_lettered += 1
            elif state.abandon:
                await message.abandon()
                self.counts.abandoned += 1
            else:
                await message.complete()
                self.counts.completed += 1
        except BusError as error:
            # The lock lapses and the bus redelivers; ThreatStream updates rather than duplicates.
            log.warning("settling message %s failed: %s", message.message.message_id, error)


def _intel_of(item: Item) -> IntelObject:
    return item[0]


def _mark_abandon(state: _Settlement) -> None:
    state.abandon = True


def _mark_delivered(state: _Settlement) -> None:
    return None
