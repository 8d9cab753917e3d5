"""The publisher's worker, which is also its consumer's handler: hold scored messages in batches, deliver each
batch to ThreatStream, settle every message by what became of it.

It opts into manual settlement (a `ManualHandler`): `hold` only adds a message to the batcher; one delivery
loop takes one batch at a time (so two revisions of an observable are never in flight at once) and, top to
bottom:
1. skips messages older than a revision of their observable already applied (a lapsed lock, a replay);
2. reads what changed in ThreatStream among the objects of ours since it last looked (`ownership`), unless it
   looked a moment ago;
3. plans the requests (`planning`): upserts or import sessions for new intelligence, changes and
   deactivations by id for what we already hold;
4. sends them one at a time through the client seam (`threatstream.Gateway`), and on each answer:
   * accepted — an upsert is confirmed by reading back what changed (a 2xx does not mean every object was
     taken); an import session is followed to its end (`sessions`);
   * rejected (400 and other content errors) — the request is split in halves, re-planned, until the
     offending observable stands alone; it is dead-lettered with ThreatStream's message;
   * forbidden (the user lacks a permission) — said once (log, readiness, counts, metric); its messages, and
     those of every other request of the batch that needs it, are dead-lettered with the reason, replayable
     with `tibridge dlq replay publisher` once the permission is granted;
   * unavailable (429/5xx/timeouts past the retry budget) — its messages go back to the bus;
   * refused (401, wrong URL) — the request is kept and tried again every probe interval while the consumer
     pauses (`DependencyUnavailable`) and readiness says why;
5. settles each message once (`ledger`): the most cautious of what its requests ended with.
Anything unexpected while delivering a batch gives its messages back to the bus; the loop goes on.

A batch is taken when it is full, when its oldest message has waited `batch_age_seconds`, or as soon as
nothing more is on its way: the upstream subscription is empty and nothing arrived for a quiet moment.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from tibridge.common.aio import first_of
from tibridge.common.bus.port import BusError
from tibridge.common.clock import Clock
from tibridge.common.consumer import DependencyUnavailable, InFlight, Settlement
from tibridge.common.contracts import IndicatorScored, Verdict
from tibridge.common.metrics import Distribution, Snapshot, Tally
from tibridge.publisher.batching import Batch, Batcher
from tibridge.publisher.ledger import Ledger, Resolution, Revisions
from tibridge.publisher.ownership import ACTIVE, KEPT_STATUSES, OwnershipIndex, read_page, read_whitelist_page
from tibridge.publisher.payloads import (
    Permission,
    ThreatStreamRequest,
    owned_search,
    session_objects_search,
    session_request,
    whitelist_request,
)
from tibridge.publisher.planning import Action, Item, Plan, Planner, Skip, Step
from tibridge.publisher.sessions import SessionState, attribute, poll_delay, session_id_of, session_state
from tibridge.publisher.settings import PublishingSettings
from tibridge.publisher.threatstream import Answer, Gateway, Outcome

log = logging.getLogger(__name__)

REJECTED_REASON = "ThreatStreamRejected"
PERMISSION_REASON = "ThreatStreamPermissionMissing"
UNMAPPABLE_REASON = "PublisherCannotMap"
SETTLE_CONCURRENCY = 128
# The engine decides how many requests are in flight; this only bounds the tasks one batch starts at once.
MAX_DEACTIVATIONS_AT_ONCE = 64
REVISIONS_KEPT = 200_000
WHITELIST_TTL_SECONDS = 600.0
MAX_WHITELIST_PAGES = 100
STALE = "stale_revision"
# A batch planned this soon after the index was last read (when the batch opened, or the previous batch's
# confirmation) skips reading it again: a change made in ThreatStream meanwhile is seen by the next read, as if
# it had been made a moment later.
OWNERSHIP_FRESH_SECONDS = 5.0

Message = InFlight[IndicatorScored]
Key = str
UpstreamBusy = Callable[[], Awaitable[bool]]


@dataclass(frozen=True)
class PublisherCounts(Snapshot):
    requests: int  # HTTP requests to ThreatStream, retries included
    retries: int
    throttled: int  # 429s from ThreatStream, honoured (every request of the process waited out the Retry-After)
    requests_by_operation: Mapping[str, int]  # import, upsert, update, search, session, whitelist
    split_requests: int
    batches: int
    mean_batch_size: float
    largest_batch: int
    coalesced: int  # messages that shared an observable's entry with another
    published: int  # observables in accepted upserts and import sessions
    updated: int  # objects of ours changed by id
    deactivated: int  # objects of ours deactivated by id
    skipped: Mapping[str, int]  # observables that needed no request, by why
    sessions_opened: int
    sessions_by_status: Mapping[str, int]  # their final states (`unfinished`: not final within the bound)
    session_observables_accepted: int
    session_observables_rejected: int
    rejections_unattributed: int  # rejected by a session, but ThreatStream does not say which ones
    rejected: int  # observables ThreatStream refused, dead-lettered with its reason
    missing_permissions: tuple[str, ...]
    completed: int
    abandoned: int
    dead_lettered: int
    dead_lettered_by_reason: Mapping[str, int]
    lock_lost: int  # settled too late: the lock had lapsed, so the bus delivers the message again
    held: int  # in batches or requests not yet answered


class _Metrics:
    def __init__(self) -> None:
        self.batches = Distribution("tibridge.publisher.batch.size", "Messages per batch")
        self.coalesced = Tally("tibridge.publisher.coalesced", "Messages coalesced into another's entry")
        self.requests = Tally("tibridge.publisher.requests", "ThreatStream requests by operation and outcome")
        self.split_requests = Tally("tibridge.publisher.split_requests", "Requests made by splitting rejected ones")
        self.steps = Tally("tibridge.publisher.objects", "Observables ThreatStream took, by step")
        self.skipped = Tally("tibridge.publisher.skipped", "Observables that needed no request, by reason")
        self.sessions = Tally("tibridge.publisher.sessions", "Import sessions opened, and followed to a status")
        self.session_observables = Tally(
            "tibridge.publisher.session.observables", "Observables of finished import sessions, by result"
        )
        self.unattributed = Tally(
            "tibridge.publisher.session.unattributed", "Rejections ThreatStream did not attribute to observables"
        )
        self.rejected = Tally("tibridge.publisher.rejected", "Observables ThreatStream refused")
        self.forbidden = Tally("tibridge.publisher.forbidden", "Requests refused for a missing permission")
        self.settled = Tally("tibridge.publisher.settled", "Messages settled by ThreatStream's answer, by outcome")


@dataclass
class _Following:
    """An import session being followed to its end, and the action that opened it."""

    session_id: str
    action: Action[Key]
    next_poll: float
    polls: int = 0


@dataclass
class _Delivery:
    """One batch on its way: its accounts, what the planner was given, what is left to send and to follow."""

    ledger: Ledger[Key, Message]
    items: dict[Key, Item[Key]]
    queue: deque[Action[Key]] = field(default_factory=deque)
    following: list[_Following] = field(default_factory=list)
    forbidden: set[Permission] = field(default_factory=set)  # refused in this batch: the rest is not sent


class Publisher:
    payload_type = IndicatorScored

    def __init__(
        self,
        gateway: Gateway,
        publishing: PublishingSettings,
        clock: Clock,
        *,
        probe_interval_seconds: float,
        quiet_seconds: float,
        upstream_check_seconds: float,
        upstream_busy: UpstreamBusy,
    ) -> None:
        self._gateway = gateway
        self._publishing = publishing
        self._clock = clock
        self._probe_interval = probe_interval_seconds
        self._upstream_check = upstream_check_seconds
        self._upstream_busy = upstream_busy
        self._batcher: Batcher[Key, IndicatorScored, Message] = Batcher(
            publishing.batch_size, publishing.max_in_flight, publishing.batch_age_seconds, quiet_seconds
        )
        self._planner = Planner(publishing)
        self._index = OwnershipIndex()
        self._index_read_at = -math.inf  # monotonic: when the last read of the index ended complete
        self._read_ahead_for: float | None = None  # the open batch (by when it opened) read ahead for
        self._revisions: Revisions[Key] = Revisions(REVISIONS_KEPT)
        self._whitelist: tuple[float, frozenset[str]] | None = None
        self._delivering: _Delivery | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.blocked: str | None = None
        self.missing: dict[Permission, str] = {}
        self._granted: set[Permission] = set()  # an answer proved we have it (since the last 403 for it)
        self._metrics = _Metrics()

    # -- the ManualHandler protocol -------------------------------------------------------------------------

    async def hold(self, item: Message) -> None:
        if self.blocked is not None:
            raise DependencyUnavailable(self.blocked)
        scored = item.payload
        if scored.verdict is Verdict.DROP:
            # The subscription's rule keeps drops away; one that slips through has nothing to publish.
            self._metrics.skipped.add(reason=Skip.DROP)
            await item.complete()
            return
        opened = self._batcher.held == 0
        full = self._batcher.add(
            scored.observable.key,
            scored.indicator.time_generated,
            scored,
            item,
            self._clock.monotonic(),
            written=scored.verdict is Verdict.PUBLISH,
        )
        if full or opened:
            self._wake.set()

    async def flush(self) -> None:
        """On stop: deliver every batch now; while ThreatStream refuses us, what is held goes back instead."""
        self._stop.set()
        async with self._lock:
            for batch in self._batcher.drain():
                await self._deliver(batch)

    async def probe(self) -> bool:
        """The delivery loop retries the refused request itself; the consumer resumes once it passed."""
        return self.blocked is None

    # -- the Worker protocol --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "publisher delivery"

    async def run(self, stop: asyncio.Event) -> None:
        """Delivers batches until `stop`; the consumer's drain then flushes what is left (`flush`)."""
        self._stop = stop
        while not stop.is_set():
            batch = await self._next_batch(stop)
            if batch is not None:
                async with self._lock:
                    await self._deliver(batch)

    async def readiness(self) -> str | None:
        if self.blocked is not None:
            return self.blocked
        if self.missing:
            return "; ".join(
                f"{detail} — its messages are dead-lettered ({PERMISSION_REASON}); grant it, then "
                f"`tibridge dlq replay publisher --reason {PERMISSION_REASON}`"
                for detail in self.missing.values()
            )
        return None

    def counts(self) -> PublisherCounts:
        metrics = self._metrics
        gateway = self._gateway.counts()
        delivering = self._delivering.ledger.messages if self._delivering else 0
        return PublisherCounts(
            requests=gateway.requests,
            retries=gateway.retries,
            throttled=gateway.throttled,
            requests_by_operation=metrics.requests.by("operation"),
            split_requests=metrics.split_requests.total(),
            batches=metrics.batches.count,
            mean_batch_size=round(metrics.batches.mean, 1),
            largest_batch=round(metrics.batches.largest),
            coalesced=metrics.coalesced.total(),
            published=metrics.steps.total(step=Step.PUBLISH),
            updated=metrics.steps.total(step=Step.UPDATE),
            deactivated=metrics.steps.total(step=Step.DEACTIVATE),
            skipped=metrics.skipped.by("reason"),
            sessions_opened=metrics.sessions.total(event="opened"),
            sessions_by_status=metrics.sessions.by("status"),
            session_observables_accepted=metrics.session_observables.total(result="accepted"),
            session_observables_rejected=metrics.session_observables.total(result="rejected"),
            rejections_unattributed=metrics.unattributed.total(),
            rejected=metrics.rejected.total(),
            missing_permissions=tuple(sorted(self.missing)),
            completed=metrics.settled.total(outcome=Settlement.COMPLETED),
            abandoned=metrics.settled.total(outcome=Settlement.ABANDONED),
            dead_lettered=metrics.settled.total(outcome=Settlement.DEAD_LETTERED),
            dead_lettered_by_reason=metrics.settled.by("reason", outcome=Settlement.DEAD_LETTERED),
            lock_lost=metrics.settled.total(outcome=Settlement.LOCK_LOST),
            held=self._batcher.held + delivering,
        )

    # -- taking batches -------------------------------------------------------------------------------------

    async def _next_batch(self, stop: asyncio.Event) -> Batch[Key, IndicatorScored, Message] | None:
        """The next batch that is full, old enough, or not waiting for anything more; None once `stop` is set."""
        recheck_at = 0.0
        while not stop.is_set():
            now = self._clock.monotonic()
            batch = self._batcher.take(now, upstream_idle=False)
            if batch is None and self._batcher.quiet(now) and now >= recheck_at:
                if not await self._upstream_has_backlog():
                    batch = self._batcher.take(now, upstream_idle=True)
                recheck_at = now + self._upstream_check
            if batch is not None:
                return batch
            opened = self._batcher.opened_at()
            if opened is not None and opened != self._read_ahead_for and self._index_read_at < opened:
                self._read_ahead_for = opened
                await self._read_ahead()
                continue
            self._wake.clear()
            age_limit, quiet_at = self._batcher.age_limit(), self._batcher.quiet_at()
            due = None if age_limit is None or quiet_at is None else min(age_limit, max(quiet_at, recheck_at))
            waits: list[Awaitable[object]] = [stop.wait(), self._wake.wait()]
            if due is not None:
                waits.append(self._clock.sleep(due - now))
            await first_of(*waits)
        return None

    async def _read_ahead(self) -> None:
        """Reads what we own (and, until it was read once, the whitelist) while a batch gathers, off its path:
        taken within OWNERSHIP_FRESH_SECONDS, the batch goes straight to its requests. Once per batch; a failure
        here is no matter: the batch reads again when it is taken."""
        async with self._lock:
            if self._whitelist is None:
                await asyncio.gather(self._refresh(), self._whitelisted())
            else:
                await self._refresh()

    async def _upstream_has_backlog(self) -> bool:
        try:
            return await self._upstream_busy()
        except Exception as error:
            # Not knowing is no reason to send small batches: the age limit still bounds the wait.
            log.debug("could not tell whether the upstream is idle (%s)", type(error).__name__)
            return True

    # -- delivering one batch -------------------------------------------------------------------------------

    async def _deliver(self, batch: Batch[Key, IndicatorScored, Message]) -> None:
        delivery = _Delivery(Ledger(), {})
        self._delivering = delivery
        self._metrics.batches.record(batch.messages)
        try:
            try:
                for entry in batch.entries.values():
                    delivery.ledger.open(entry.key, entry.messages, entry.order)
                    self._metrics.coalesced.add(len(entry.messages) - 1)
                    if self._revisions.is_stale(entry.key, entry.order):
                        self._metrics.skipped.add(reason=STALE)
                    else:
                        delivery.items[entry.key] = Item(entry.key, entry.payload)
                if delivery.items:
                    await self._plan_and_send(delivery)
            except Exception:
                log.exception("delivering a batch of %d messages failed unexpectedly; giving them back", batch.messages)
                delivery.ledger.give_back()
            # Not reached when cancelled: what the batch holds then goes back with the consumer's drain.
            await self._settle(delivery.ledger)
        finally:
            self._delivering = None

    async def _plan_and_send(self, delivery: _Delivery) -> None:
        fresh = self._clock.monotonic() - self._index_read_at < OWNERSHIP_FRESH_SECONDS
        if not fresh and await self._refresh() is None:
            self._give_back(delivery, delivery.items, "ThreatStream could not be read")
            return
        self._enqueue(delivery, self._planner.plan(list(delivery.items.values()), self._index, self._clock.now()))
        while delivery.queue:
            wave = self._next_wave(delivery)
            # Deactivations by id are independent of each other: they go at once, as many in flight as the
            # engine allows; everything else (an upsert, an import session) goes alone, in plan order.
            answers = await asyncio.gather(*(self._send(action.request) for action in wave))
            stopping = [action for action, answer in zip(wave, answers, strict=True) if answer is None]
            for action, answer in zip(wave, answers, strict=True):
                if answer is not None:
                    await self._answered(delivery, action, answer)
            if stopping:  # stopping while ThreatStream refuses us
                self._give_back_all(delivery, [*stopping, *delivery.queue], "the publisher is stopping")
                return
        await self._follow(delivery)

    def _next_wave(self, delivery: _Delivery) -> list[Action[Key]]:
        """The head of the queue to send now: one action, or every deactivation in a row there (at most
        `MAX_DEACTIVATIONS_AT_ONCE`) once an answer proved their permission (until then one goes alone, so a
        missing permission costs one request); those a permission we lack forbids are dead-lettered on the way."""
        wave: list[Action[Key]] = []
        while delivery.queue and len(wave) < MAX_DEACTIVATIONS_AT_ONCE:
            action = delivery.queue[0]
            if wave and (action.step is not Step.DEACTIVATE or wave[0].step is not Step.DEACTIVATE):
                break
            delivery.queue.popleft()
            permission = action.request.permission
            if permission is not None and permission in delivery.forbidden and permission in self.missing:
                self._dead_letter_forbidden(delivery, action, self.missing[permission])
                continue
            wave.append(action)
            if action.step is not Step.DEACTIVATE or (permission is not None and permission not in self._granted):
                break
        return wave

    def _enqueue(self, delivery: _Delivery, plan: Plan[Key], *, first: bool = False) -> None:
        ledger = delivery.ledger
        for key, reason in plan.skipped.items():
            self._metrics.skipped.add(reason=reason)
            ledger.decide(key, Resolution.COMPLETE)
        for key, description in plan.refused.items():
            log.warning("dead-lettering message(s) about %s: %s", key, description)
            ledger.decide(key, Resolution.DEAD_LETTER, UNMAPPABLE_REASON, description)
        for action in plan.actions:
            ledger.claim(action.keys)
        if first:
            delivery.queue.extendleft(reversed(plan.actions))
        else:
            delivery.queue.extend(plan.actions)

    async def _answered(self, delivery: _Delivery, action: Action[Key], answer: Answer) -> None:
        ledger = delivery.ledger
        if answer.outcome is Outcome.ACCEPTED:
            await self._accepted(delivery, action, answer)
        elif answer.outcome is Outcome.FORBIDDEN:
            if answer.permission is not None:
                delivery.forbidden.add(answer.permission)
            self._dead_letter_forbidden(delivery, action, answer.detail)
        elif answer.outcome is Outcome.UNAVAILABLE:
            log.warning("giving %d observables back to the bus: %s", len(action.keys), answer.detail)
            ledger.answer(action.keys, Resolution.ABANDON)
        elif action.target is not None and answer.status in (403, 404):
            log.warning("object %d is not ours to change (%s); leaving it alone", action.target.id, answer.detail)
            self._index.forget([action.target])
            ledger.answer(action.keys, Resolution.COMPLETE)
        elif len(action.keys) > 1:
            self._split(delivery, action, answer)
        else:
            log.warning("ThreatStream rejects an observable; dead-lettering it: %s", answer.detail)
            self._metrics.rejected.add()
            ledger.answer(action.keys, Resolution.DEAD_LETTER, REJECTED_REASON, answer.detail)

    async def _accepted(self, delivery: _Delivery, action: Action[Key], answer: Answer) -> None:
        ledger = delivery.ledger
        if action.step is Step.DEACTIVATE and action.target is not None:
            self._index.forget([action.target])
        if action.request.method == "POST":  # an import session: its end decides
            session_id = session_id_of(answer.body)
            self._metrics.sessions.add(event="opened")
            if session_id is not None:
                due = self._clock.monotonic() + poll_delay(0)
                delivery.following.append(_Following(session_id, action, due))
                return
            log.info("ThreatStream gave no import session id (%s); nothing to follow", answer.detail)
        elif action.step is Step.PUBLISH:  # an upsert: confirmed by reading back what changed
            await self._confirm(delivery, action)
            return
        self._metrics.steps.add(len(action.keys), step=action.step)
        ledger.answer(action.keys, Resolution.COMPLETE)

    async def _confirm(self, delivery: _Delivery, action: Action[Key]) -> None:
        seen = await self._refresh()
        if seen is None:
            # The upsert probably landed; sending it again on redelivery updates rather than duplicates.
            delivery.ledger.answer(action.keys, Resolution.ABANDON)
            return
        missing = {one.key: one.value for one in action.written if (one.value, one.itype) not in seen}
        if missing:
            whitelist = await self._whitelisted()
            for key, value in missing.items():
                why = (
                    "ThreatStream left it out of an upsert it answered 2xx to: the value is on the organisation's "
                    "ThreatStream whitelist (GET /api/v1/orgwhitelist/)"
                    if whitelist is not None and value in whitelist
                    else "ThreatStream left it out of an upsert it answered 2xx to (it found a field invalid; "
                    "ThreatStream does not say which)"
                )
                log.warning("ThreatStream did not take an observable; dead-lettering it: %s", why)
                self._metrics.rejected.add()
                delivery.ledger.answer([key], Resolution.DEAD_LETTER, REJECTED_REASON, why)
        landed = [key for key in action.keys if key not in missing]
        self._metrics.steps.add(len(landed), step=Step.PUBLISH)
        delivery.ledger.answer(landed, Resolution.COMPLETE)

    def _split(self, delivery: _Delivery, action: Action[Key], answer: Answer) -> None:
        middle = len(action.keys) // 2
        log.warning(
            "ThreatStream rejects a request of %d observables (%s); splitting it to find the offending ones",
            len(action.keys),
            answer.detail,
        )
        now = self._clock.now()
        for half in (action.keys[:middle], action.keys[middle:]):
            plan = self._planner.plan([delivery.items[key] for key in half], self._index, now)
            self._metrics.split_requests.add(len(plan.actions))
            self._enqueue(delivery, plan, first=True)
        delivery.ledger.answer(action.keys, Resolution.COMPLETE)  # the halves carry them now

    # -- permissions ----------------------------------------------------------------------------------------

    def _dead_letter_forbidden(self, delivery: _Delivery, action: Action[Key], detail: str) -> None:
        self._metrics.forbidden.add(permission=str(action.request.permission))
        delivery.ledger.answer(action.keys, Resolution.DEAD_LETTER, PERMISSION_REASON, detail)

    def _permission_answer(self, request: ThreatStreamRequest, answer: Answer) -> None:
        permission = request.permission
        if permission is None:
            return
        if answer.outcome is Outcome.FORBIDDEN:
            self._granted.discard(permission)
            if permission not in self.missing:
                log.error("%s; dead-lettering what needs it until it is granted", answer.detail)
            self.missing[permission] = answer.detail
        elif answer.outcome in (Outcome.ACCEPTED, Outcome.REJECTED):
            self._granted.add(permission)
            if permission in self.missing:
                log.info("the ThreatStream user has the '%s' permission now", permission)
                del self.missing[permission]

    # -- import sessions ------------------------------------------------------------------------------------

    async def _follow(self, delivery: _Delivery) -> None:
        """Polls each session of the batch until it is final, or the follow bound passes."""
        deadline = self._clock.monotonic() + self._publishing.session_follow_seconds
        pending = delivery.following
        while pending:
            now = self._clock.monotonic()
            if now >= deadline or self._stop.is_set():
                for unfinished in pending:
                    self._unfinished(delivery, unfinished)
                pending.clear()
                return
            following = min(pending, key=lambda one: one.next_poll)
            if following.next_poll > now:
                await first_of(self._stop.wait(), self._clock.sleep(min(following.next_poll, deadline) - now))
                continue
            answer = await self._send(session_request(following.session_id))
            state = session_state(answer.body) if answer is not None and answer.outcome is Outcome.ACCEPTED else None
            if state is not None and state.final:
                pending.remove(following)
                await self._finished(delivery, following, state)
            else:
                following.polls += 1
                following.next_poll = self._clock.monotonic() + poll_delay(following.polls)

    def _unfinished(self, delivery: _Delivery, following: _Following) -> None:
        log.warning(
            "import session %s was not followed to its end (%s); its %d observables are taken as accepted",
            following.session_id,
            "stopping" if self._stop.is_set() else f"not final within {self._publishing.session_follow_seconds:.0f} s",
            len(following.action.keys),
        )
        self._metrics.sessions.add(status="unfinished")
        self._metrics.steps.add(len(following.action.keys), step=Step.PUBLISH)
        delivery.ledger.answer(following.action.keys, Resolution.COMPLETE)

    async def _finished(self, delivery: _Delivery, following: _Following, state: SessionState) -> None:
        action, session_id = following.action, following.session_id
        self._metrics.sessions.add(status=str(state.status))
        self._metrics.session_observables.add(state.accepted, result="accepted")
        self._metrics.session_observables.add(state.rejected, result="rejected")
        log.info("import session %s is %s: %d accepted, %d rejected", session_id, state.status, *state.counts)
        values = {one.key: one.value for one in action.written}
        whitelist = await self._whitelisted() if state.rejected else None
        landed = None
        if state.rejected and state.status == "approved":
            named = sum(1 for value in values.values() if whitelist is not None and value in whitelist)
            if named < state.rejected:
                landed = await self._landed(session_id)
        verdicts = attribute(session_id, state, values, whitelist, landed)
        if verdicts.unattributed:
            log.warning(
                "import session %s rejected %d observables ThreatStream does not name; they stay completed",
                session_id,
                verdicts.unattributed,
            )
            self._metrics.unattributed.add(verdicts.unattributed)
        for key, why in verdicts.rejected.items():
            log.warning("ThreatStream rejected an observable in import session %s: %s", session_id, why)
            self._metrics.rejected.add()
            delivery.ledger.answer([key], Resolution.DEAD_LETTER, REJECTED_REASON, why)
        taken = [key for key in action.keys if key not in verdicts.rejected]
        self._metrics.steps.add(len(taken), step=Step.PUBLISH)
        delivery.ledger.answer(taken, Resolution.COMPLETE)

    async def _landed(self, session_id: str) -> frozenset[str] | None:
        values: set[str] = set()
        after: int | None = None
        while True:
            answer = await self._send(session_objects_search(session_id, after))
            page = read_page(answer.body, self._publishing) if answer and answer.outcome is Outcome.ACCEPTED else None
            if page is None:
                return None
            values |= page.values
            if page.last or page.highest_update_id is None or page.highest_update_id == after:
                return frozenset(values)
            after = page.highest_update_id

    async def _whitelisted(self) -> frozenset[str] | None:
        """The organisation's whitelist, read at most every WHITELIST_TTL_SECONDS; None when it cannot be read."""
        now = self._clock.monotonic()
        if self._whitelist is not None and now - self._whitelist[0] < WHITELIST_TTL_SECONDS:
            return self._whitelist[1]
        values: set[str] = set()
        for page in range(MAX_WHITELIST_PAGES):
            answer = await self._send(whitelist_request(page * 1000))
            body = answer.body if answer is not None and answer.outcome is Outcome.ACCEPTED else None
            read = read_whitelist_page(body)
            if read is None:
                return None
            values |= read[0]
            if read[1]:
                break
        self._whitelist = (now, frozenset(values))
        return self._whitelist[1]

    # -- reading what we own --------------------------------------------------------------------------------

    async def _refresh(self) -> set[tuple[str, str]] | None:
        """Brings the ownership index up to date; the (value, itype) of every active object of ours that changed
        since the last look, or None when ThreatStream could not be read."""
        first = not self._index.loaded
        seen: set[tuple[str, str]] = set()
        while True:
            request = owned_search(self._publishing.owner_tag, self._index.watermark, KEPT_STATUSES if first else ())
            answer = await self._send(request)
            page = read_page(answer.body, self._publishing) if answer and answer.outcome is Outcome.ACCEPTED else None
            if page is None:
                if answer is not None and answer.outcome is Outcome.ACCEPTED:
                    log.warning("ThreatStream's search answer is not a page of objects; reading it again later")
                return None
            before = self._index.watermark
            self._index.apply(page)
            seen |= {(obj.value, obj.itype) for obj in page.owned if obj.status == ACTIVE}
            if page.last or self._index.watermark == before:
                self._index.loaded = True
                self._index_read_at = self._clock.monotonic()
                return seen

    # -- sending --------------------------------------------------------------------------------------------

    async def _send(self, request: ThreatStreamRequest) -> Answer | None:
        """ThreatStream's answer; while it refuses us, the same request every probe interval (None if stopping)."""
        while True:
            try:
                answer = await self._gateway.send(request)
            except Exception as error:
                # The delivery loop must outlive any surprise; the bus gets the messages back.
                log.exception("sending a ThreatStream request failed unexpectedly")
                answer = Answer(Outcome.UNAVAILABLE, f"unexpected {type(error).__name__}")
            self._metrics.requests.add(operation=str(request.operation), outcome=str(answer.outcome))
            if answer.outcome is not Outcome.REFUSED:
                if self.blocked is not None:
                    log.info("ThreatStream accepts us again")
                    self.blocked = None
                self._permission_answer(request, answer)
                return answer
            if self.blocked is None:
                log.error("ThreatStream refuses us; holding what we have: %s", answer.detail)
            self.blocked = answer.detail
            if self._stop.is_set():
                return None
            await first_of(self._stop.wait(), self._clock.sleep(self._probe_interval))
            if self._stop.is_set():
                return None

    # -- settling -------------------------------------------------------------------------------------------

    def _give_back(self, delivery: _Delivery, keys: Iterable[Key], why: str) -> None:
        log.warning("giving the batch back to the bus: %s", why)
        for key in keys:
            delivery.ledger.decide(key, Resolution.ABANDON)

    def _give_back_all(self, delivery: _Delivery, actions: Iterable[Action[Key]], why: str) -> None:
        log.warning("giving what is left of the batch back to the bus: %s", why)
        for action in actions:
            delivery.ledger.answer(action.keys, Resolution.ABANDON)
        delivery.queue.clear()
        for following in delivery.following:
            delivery.ledger.answer(following.action.keys, Resolution.ABANDON)
        delivery.following.clear()

    async def _settle(self, ledger: Ledger[Key, Message]) -> None:
        room = asyncio.Semaphore(SETTLE_CONCURRENCY)

        async def settle(message: Message, resolution: Resolution, reason: str, description: str) -> None:
            async with room:
                await self._settle_one(message, resolution, reason, description, failed)

        failed: list[BusError] = []
        settlements = []
        for settled in ledger.settled():
            account = settled.account
            if account.resolution is Resolution.COMPLETE:
                self._revisions.record(settled.key, account.revision)
            settlements += [
                settle(message, account.resolution, account.reason, account.description) for message in account.messages
            ]
        # Side by side: on Service Bus one settlement at a time waits behind the consumer's receive.
        await asyncio.gather(*settlements)
        if failed:
            # Their locks lapse and the bus delivers them again; ThreatStream then updates rather than duplicates.
            log.warning("settling %d messages failed (%s); they will be delivered again", len(failed), failed[0])

    async def _settle_one(
        self, message: Message, resolution: Resolution, reason: str, description: str, failed: list[BusError]
    ) -> None:
        try:
            if resolution is Resolution.DEAD_LETTER:
                outcome = await message.dead_letter(reason, description)
            elif resolution is Resolution.ABANDON:
                outcome = await message.abandon()
            else:
                outcome = await message.complete()
            if outcome is Settlement.DEAD_LETTERED:
                self._metrics.settled.add(outcome=outcome, reason=reason)
            elif outcome is not None:
                self._metrics.settled.add(outcome=outcome)
        except BusError as error:
            failed.append(error)
