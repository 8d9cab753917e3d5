"""Gathers lookups from concurrent messages into Graph requests, paced by the engine, and retries what Graph
defers within each lookup's own budget.

The dispatcher takes a permit from the process's Graph `Pacer` (no pause, a request slot free, tokens for a
full batch), then lets lookups gather until the batch is full or its oldest lookup has lingered
`linger_seconds` (counted from the permit too, so lookups that arrive while Graph makes us wait fill the next
request), and sends it — several in flight when the pacer allows. A request is sent once; per lookup, a 429
pauses every caller for its Retry-After and queues the lookup again, a 5xx or a malformed answer queues it
again after a backoff with jitter, and each request that carries a lookup spends one of its attempts: after
`max_attempts` its caller gets `LookupFailed` (the message goes back to the bus, never dropped).

Graph refusing us — 401/403, or 500 for `refusal_after_server_errors` different hosts in a row (how a tenant
without the API's licence was answered) — fails every waiting lookup with `DependencyUnavailable` until a
probe or any answer shows Graph accepts us again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from tibridge.common.clock import Clock
from tibridge.common.consumer import DependencyUnavailable, PermanentFailure, TryLater
from tibridge.common.contracts import Reputation
from tibridge.common.pacing import Attempts, Engine, Permit, Retry, Signal
from tibridge.scorer.reputation import (
    SERVER_ERROR,
    Found,
    GraphCounts,
    GraphReputationClient,
    ItemAnswer,
    Refused,
    Unanswerable,
    server_error_refusal,
)
from tibridge.scorer.settings import LookupMode

log = logging.getLogger(__name__)

GRAPH_REJECTED_HOST = "GraphRejectedHost"
# Looked up while paused, to learn whether Graph accepts us again.
PROBE_HOST = "microsoft.com"


class LookupFailed(TryLater):
    """A lookup did not complete within its attempts; its message goes back to the bus for later."""


@dataclass(eq=False)
class _Lookup:
    host: str
    future: asyncio.Future[Reputation | None]
    queued_at: float
    attempts: Attempts


class GraphBatcher:
    """The scorer's reputation source: lookups of concurrent messages share Graph requests."""

    def __init__(
        self,
        client: GraphReputationClient,
        engine: Engine,
        *,
        clock: Clock,
        linger_seconds: float,
        batch_size: int,
        refusal_after_server_errors: int,
    ) -> None:
        if not 1 <= batch_size <= client.max_hosts:
            raise ValueError(f"batch_size must be 1 to {client.max_hosts}")
        self._client = client
        self._engine = engine
        self._pacer = engine.pacer
        self._clock = clock
        self._linger = linger_seconds
        self._batch_size = batch_size
        self._refusal_threshold = refusal_after_server_errors
        self._waiting: deque[_Lookup] = deque()
        self._changed = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refusal: str | None = None
        self._failing_hosts: set[str] = set()  # answered 500 since the last answer

    async def lookup(self, host: str) -> Reputation | None:
        """Graph's reputation of `host` (None: it has none).

        Raises `LookupFailed` (try later), `DependencyUnavailable` (Graph refuses us) or `PermanentFailure`.
        """
        if self._refusal is not None:
            raise DependencyUnavailable(self._refusal)
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch())
            self._dispatcher.add_done_callback(_report_crash)
        future: asyncio.Future[Reputation | None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Lookup(host, future, _now(), Attempts(self._engine.policy.max_attempts)))
        return await future

    async def probe(self) -> bool:
        """One lookup outside any batch (paced like the rest): True once Graph accepts us again."""
        permit = await self._pacer.acquire(1)
        try:
            [answer] = await self._client.lookup([PROBE_HOST])
        finally:
            permit.release(Signal.NEUTRAL)
        accepted = isinstance(answer, Found | Unanswerable)
        if accepted:
            self._accepted()
        return accepted

    def counts(self) -> GraphCounts:
        metrics = self._client.metrics
        pace = self._pacer.state()
        return GraphCounts(
            requests=metrics.requests.total(),
            batch_requests=metrics.requests.total(kind=str(LookupMode.BATCH)),
            items=round(metrics.sizes.sum),
            throttled=metrics.throttled.total(),
            retries=self._engine.counts().retries,
            rate=pace.rate,
            peak_rate=pace.peak_rate,
            parallel_limit=pace.parallel_limit,
            peak_in_flight=pace.peak_in_flight,
        )

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._dispatcher] if self._dispatcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_waiting(_stopping())

    # -- gathering ------------------------------------------------------------------------------------------

    def _enqueue(self, lookup: _Lookup, *, first: bool = False) -> None:
        if first:
            self._waiting.appendleft(lookup)
        else:
            self._waiting.append(lookup)
        self._changed.set()

    async def _dispatch(self) -> None:
        while True:
            while not self._waiting:
                self._changed.clear()
                await self._changed.wait()
            permit = await self._pacer.acquire(self._batch_size)
            try:
                await self._gathered(since=_now())
                # A 429 may have come in while the batch gathered: its window holds this request too.
                await self._pacer.unpaused()
                batch = self._take()
            except BaseException:
                permit.release(Signal.NEUTRAL)
                raise
            permit.shrink(len(batch))
            if batch:
                self._spawn(self._send(batch, permit))
            else:  # every waiting lookup was failed meanwhile (Graph refused us)
                permit.release(Signal.NEUTRAL)

    async def _gathered(self, since: float) -> None:
        """Returns once a batch is full, or a lookup has waited `linger` both in the queue and since `since`.

        Lingering from the moment the permit came (`since`) too lets the lookups that arrive while the previous
        requests were in flight, or while Graph made us wait, fill this one instead of sending a few left over.
        """
        while len(self._waiting) < self._batch_size:
            if self._waiting:
                remaining = max(self._waiting[0].queued_at, since) + self._linger - _now()
                if remaining <= 0:
                    return
            else:
                remaining = None
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _take(self) -> list[_Lookup]:
        count = min(self._batch_size, len(self._waiting))
        return [self._waiting.popleft() for _ in range(count)]

    # -- sending and settling -------------------------------------------------------------------------------

    async def _send(self, batch: list[_Lookup], permit: Permit) -> None:
        try:
            try:
                answers = await self._client.lookup([lookup.host for lookup in batch])
            except Exception as error:
                log.exception("a Graph request failed unexpectedly; its lookups will be retried")
                answers = [Retry(type(error).__name__)] * len(batch)
        except asyncio.CancelledError:
            permit.release(Signal.NEUTRAL)
            for lookup in batch:
                _fail(lookup, _stopping())
            raise
        # Settled at once: a 429 pauses the pacer before any other request may leave.
        permit.release(_signal_of(answers), delivered=sum(not isinstance(a, Retry) for a in answers))
        for lookup, answer in zip(batch, answers, strict=True):
            self._settle(lookup, answer)

    def _settle(self, lookup: _Lookup, answer: ItemAnswer) -> None:
        match answer:
            case Found(reputation):
                self._accepted()
                if not lookup.future.done():
                    lookup.future.set_result(reputation)
            case Unanswerable(status, message):
                self._accepted()
                _fail(
                    lookup,
                    PermanentFailure(GRAPH_REJECTED_HOST, f"Graph answered HTTP {status} for this host: {message}"),
                )
            case Refused(reason):
                self._refuse(reason)
                _fail(lookup, DependencyUnavailable(reason))
            case Retry():
                self._retry(lookup, answer)

    def _retry(self, lookup: _Lookup, retry: Retry) -> None:
        if retry.cause == SERVER_ERROR:
            self._failing_hosts.add(lookup.host)
            if len(self._failing_hosts) >= self._refusal_threshold:
                self._refuse(server_error_refusal(len(self._failing_hosts), retry.detail))
        delay = self._engine.after(retry, lookup.attempts)
        if self._refusal is not None:
            _fail(lookup, DependencyUnavailable(self._refusal))
        elif delay.seconds is None:
            detail = f": {retry.detail}" if retry.detail else ""
            _fail(lookup, LookupFailed(f"Graph lookups kept failing ({retry.cause}{detail}): {delay.reason}"))
        elif retry.signal is Signal.THROTTLED or retry.retry_after is not None:
            # The paused pacer holds the next request until the window ends.
            self._requeue(lookup)
        else:
            self._spawn(self._requeue_after(lookup, delay.seconds))

    async def _requeue_after(self, lookup: _Lookup, delay: float) -> None:
        try:
            await self._clock.sleep(delay)
        except asyncio.CancelledError:
            _fail(lookup, _stopping())
            raise
        if self._refusal is not None:
            _fail(lookup, DependencyUnavailable(self._refusal))
        else:
            self._requeue(lookup)

    def _requeue(self, lookup: _Lookup) -> None:
        if not lookup.future.done():
            lookup.queued_at = _now()
            self._enqueue(lookup, first=True)

    # -- refusal --------------------------------------------------------------------------------------------

    def _refuse(self, reason: str) -> None:
        """Graph refuses us: every lookup waiting now, or asked for until it accepts us again, fails at once."""
        if self._refusal is None:
            log.error("Graph refuses the scorer: %s", reason)
        self._refusal = reason
        self._fail_waiting(DependencyUnavailable(reason))

    def _accepted(self) -> None:
        self._failing_hosts.clear()
        if self._refusal is not None:
            log.info("Graph answers the scorer again")
            self._refusal = None

    def _fail_waiting(self, error: Exception) -> None:
        while self._waiting:
            _fail(self._waiting.popleft(), error)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _signal_of(answers: Sequence[ItemAnswer]) -> Signal:
    """What one request's answers say about Graph's capacity, worst first."""
    signals = {answer.signal for answer in answers if isinstance(answer, Retry)}
    for signal in (Signal.THROTTLED, Signal.OVERLOADED, Signal.NEUTRAL):
        if signal in signals:
            return signal
    return Signal.CLEAN


def _fail(lookup: _Lookup, error: Exception) -> None:
    if not lookup.future.done():
        lookup.future.set_exception(error)


def _stopping() -> LookupFailed:
    return LookupFailed("the scorer is stopping")


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("the Graph batch dispatcher stopped; the next lookup restarts it", exc_info=error)


def _now() -> float:
    # Lingering is event-loop time: it only orders lookups that are all waiting in this loop.
    return asyncio.get_running_loop().time()
