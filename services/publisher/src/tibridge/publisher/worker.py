"""The publisher's worker, which is also its consumer's handler: hold scored messages in batches, send each
batch, settle by ThreatStream's answer.

It opts into manual settlement (a `ManualHandler`): `hold` only adds a message to the batcher; a delivery loop
sends the batches that are full or old enough, one request at a time, and settles their messages by the answer
(the consumer renews their locks meanwhile):
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
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tibridge.common.aio import first_of
from tibridge.common.bus.port import BusError
from tibridge.common.clock import Clock
from tibridge.common.consumer import DependencyUnavailable, InFlight, Settlement
from tibridge.common.contracts import IndicatorScored, Verdict
from tibridge.common.metrics import Distribution, Snapshot, Tally
from tibridge.publisher.batching import Batch, Batcher, Entry, chunked, import_groups
from tibridge.publisher.mapping import IntelObject, MappingPolicy, intel_objects
from tibridge.publisher.payloads import ThreatStreamRequest, WireOptions, import_request, upsert_request
from tibridge.publisher.settings import PublishMode
from tibridge.publisher.threatstream import Answer, Gateway, Outcome

log = logging.getLogger(__name__)

REJECTED_REASON = "ThreatStreamRejected"
SETTLE_CONCURRENCY = 128

Message = InFlight[IndicatorScored]
Item = tuple[IntelObject, Entry[IndicatorScored, Message]]
_Batch = Batch[Verdict, IndicatorScored, Message]


@dataclass(frozen=True)
class PublisherOptions:
    mode: PublishMode
    batch_size: int
    batch_age_seconds: float
    mapping: MappingPolicy
    wire: WireOptions
    probe_interval_seconds: float
    session_expiry_days: int


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


@dataclass(frozen=True)
class PublisherCounts(Snapshot):
    requests: int  # HTTP requests to ThreatStream, retries included
    retries: int
    split_requests: int
    objects_sent: Mapping[str, int]  # by verdict
    batches: int
    mean_batch_size: float
    largest_batch: int
    coalesced: int  # messages that shared an observable's entry with another
    completed: int
    abandoned: int
    dead_lettered: int
    lock_lost: int  # settled too late: the lock had lapsed, so the bus delivers the message again
    skipped_drop_verdicts: int
    held: int  # in batches or requests not yet answered


class _Metrics:
    def __init__(self) -> None:
        self.batches = Distribution("tibridge.publisher.batch.size", "Messages per batch")
        self.coalesced = Tally("tibridge.publisher.coalesced", "Messages coalesced into another's entry")
        self.requests = Tally("tibridge.publisher.requests", "ThreatStream requests by outcome")
        self.split_requests = Tally("tibridge.publisher.split_requests", "Requests made by splitting rejected ones")
        self.objects = Tally("tibridge.publisher.objects", "Objects ThreatStream took, by verdict")
        self.settled = Tally("tibridge.publisher.settled", "Messages settled by ThreatStream's answer, by outcome")
        self.skipped = Tally("tibridge.publisher.skipped", "Drop verdicts that slipped past the subscription rule")


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
        self._metrics = _Metrics()

    # -- the ManualHandler protocol -------------------------------------------------------------------------

    async def hold(self, item: Message) -> None:
        if self.blocked is not None:
            raise DependencyUnavailable(self.blocked)
        scored = item.payload
        if scored.verdict is Verdict.DROP:
            # The subscription's rule keeps drops away; one that slips through has nothing to publish.
            self._metrics.skipped.add()
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

    def counts(self) -> PublisherCounts:
        metrics = self._metrics
        gateway = self._gateway.counts()
        return PublisherCounts(
            requests=gateway.requests,
            retries=gateway.retries,
            split_requests=metrics.split_requests.total(),
            objects_sent=metrics.objects.by("verdict"),
            batches=metrics.batches.count,
            mean_batch_size=round(metrics.batches.mean, 1),
            largest_batch=round(metrics.batches.largest),
            coalesced=metrics.coalesced.total(),
            completed=metrics.settled.total(outcome=Settlement.COMPLETED),
            abandoned=metrics.settled.total(outcome=Settlement.ABANDONED),
            dead_lettered=metrics.settled.total(outcome=Settlement.DEAD_LETTERED),
            lock_lost=metrics.settled.total(outcome=Settlement.LOCK_LOST),
            skipped_drop_verdicts=metrics.skipped.total(),
            held=self._batcher.held + sum(len(s.items) for s in self._outbox),
        )

    def _enqueue(self, batches: Sequence[_Batch]) -> None:
        for batch in batches:
            size = len(batch.messages)
            self._metrics.batches.record(size, verdict=str(batch.lane))
            self._metrics.coalesced.add(size - len(batch.entries))
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
        self._metrics.requests.add(outcome=str(answer.outcome))
        if answer.outcome is Outcome.REFUSED:
            if self.blocked is None:
                log.error("ThreatStream refuses us; holding %d objects: %s", len(shipment.items), answer.detail)
            self.blocked = answer.detail
            return
        self.blocked = None
        self._outbox.popleft()
        if answer.outcome is Outcome.ACCEPTED:
            log.info("ThreatStream accepted %d %s objects", len(shipment.items), shipment.lane)
            self._metrics.objects.add(len(shipment.items), verdict=str(shipment.lane))
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
        self._metrics.split_requests.add(len(halves))
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
                outcome = await message.dead_letter(REJECTED_REASON, state.dead_letter)
            elif state.abandon:
                outcome = await message.abandon()
            else:
                outcome = await message.complete()
            if outcome is not None:
                self._metrics.settled.add(outcome=outcome)
        except BusError as error:
            # The lock lapses and the bus redelivers; ThreatStream updates rather than duplicates.
            log.warning("settling message %s failed: %s", message.message.message_id, error)


def _intel_of(item: Item) -> IntelObject:
    return item[0]


def _mark_abandon(state: _Settlement) -> None:
    state.abandon = True


def _mark_delivered(state: _Settlement) -> None:
    return None
