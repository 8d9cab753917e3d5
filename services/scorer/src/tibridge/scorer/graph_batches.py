"""Gathers lookups from concurrent messages into Graph `$batch` requests and retries what Graph defers.

A batch leaves once a request slot is free and the rate limiter is not paused, when it holds `batch_size`
lookups or its oldest lookup has lingered `linger_seconds` (counted from the slot freeing too), so lookups
keep gathering while a batch is in flight or Graph makes us wait. Per item: a 429 pauses the process's
limiter for its Retry-After and queues the item again; a 5xx or a malformed answer queues it again after a
backoff with jitter; every lookup has a bounded number of attempts, after which its caller gets
`LookupFailed` (the message goes back to the bus, never dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from tibridge.common.clock import Clock
from tibridge.common.consumer import DependencyUnavailable, PermanentFailure, TryLater
from tibridge.common.contracts import Reputation
from tibridge.common.http import RateLimiter, RetryPolicy
from tibridge.scorer.reputation import (
    MAX_BATCH_ITEMS,
    Found,
    GraphCounts,
    GraphReputationClient,
    ItemAnswer,
    Refused,
    Retry,
    Unanswerable,
)

log = logging.getLogger(__name__)

GRAPH_REJECTED_HOST = "GraphRejectedHost"
# Looked up while paused, to learn whether Graph accepts our token again.
PROBE_HOST = "microsoft.com"


class LookupFailed(TryLater):
    """A lookup did not complete within its attempts; its message goes back to the bus for later."""


@dataclass(eq=False)
class _Lookup:
    host: str
    future: asyncio.Future[Reputation | None]
    queued_at: float
    attempts: int = 0


class GraphBatcher:
    """The scorer's reputation source: lookups of concurrent messages share Graph `$batch` requests."""

    def __init__(
        self,
        client: GraphReputationClient,
        limiter: RateLimiter,
        policy: RetryPolicy,
        *,
        clock: Clock,
        linger_seconds: float,
        batch_size: int,
        parallel_requests: int,
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_ITEMS:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH_ITEMS}")
        self._client = client
        self._limiter = limiter
        self._policy = policy
        self._clock = clock
        self._metrics = client.metrics
        self._linger = linger_seconds
        self._batch_size = batch_size
        self._slots = asyncio.Semaphore(parallel_requests)
        self._rng = rng
        self._waiting: deque[_Lookup] = deque()
        self._changed = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def lookup(self, host: str) -> Reputation | None:
        """MDTI's reputation of `host` (None: it has none).

        Raises `LookupFailed` (try later), `DependencyUnavailable` (Graph refuses us) or `PermanentFailure`.
        """
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.create_task(self._dispatch())
            self._dispatcher.add_done_callback(_report_crash)
        lookup = _Lookup(host, asyncio.get_running_loop().create_future(), queued_at=_now())
        self._enqueue(lookup)
        return await lookup.future

    async def probe(self) -> bool:
        """One lookup outside any batch: True once Graph accepts our token again."""
        [answer] = await self._client.lookup_batch([PROBE_HOST])
        return isinstance(answer, Found | Unanswerable)

    def counts(self) -> GraphCounts:
        return self._metrics.counts()

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._dispatcher] if self._dispatcher else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self._waiting:
            _fail(self._waiting.popleft(), _stopping())

    # -- gathering ------------------------------------------------------------------------------------------

    def _enqueue(self, lookup: _Lookup) -> None:
        self._waiting.append(lookup)
        self._changed.set()

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                # Lookups keep gathering while Graph makes us wait, so the wait costs no extra requests.
                while (paused := self._limiter.paused_for) > 0:
                    await self._clock.sleep(paused)
                await self._gathered(since=_now())
                batch = self._take()
            except BaseException:
                self._slots.release()
                raise
            self._spawn(self._send(batch))

    async def _gathered(self, since: float) -> None:
        """Returns once a batch is full, or a lookup has waited `linger` both in the queue and since `since`.

        Lingering from the moment a request slot freed (`since`) too lets the lookups that arrive while the
        previous batch was in flight fill this one, instead of sending the few that were left over.
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

    async def _send(self, batch: list[_Lookup]) -> None:
        try:
            try:
                answers = await self._client.lookup_batch([lookup.host for lookup in batch])
            except Exception as error:
                log.exception("a Graph $batch failed unexpectedly; its lookups will be retried")
                answers = [Retry(type(error).__name__)] * len(batch)
            # Settled before the slot is freed: a 429 pauses the limiter before the next batch may leave.
            for lookup, answer in zip(batch, answers, strict=True):
                self._settle(lookup, answer)
        except asyncio.CancelledError:
            for lookup in batch:
                _fail(lookup, _stopping())
            raise
        finally:
            self._slots.release()

    def _settle(self, lookup: _Lookup, answer: ItemAnswer) -> None:
        match answer:
            case Found(reputation):
                if not lookup.future.done():
                    lookup.future.set_result(reputation)
            case Refused(reason):
                _fail(lookup, DependencyUnavailable(reason))
            case Unanswerable(status, message):
                _fail(
                    lookup,
                    PermanentFailure(GRAPH_REJECTED_HOST, f"Graph answered HTTP {status} for this host: {message}"),
                )
            case Retry():
                self._retry(lookup, answer)

    def _retry(self, lookup: _Lookup, retry: Retry) -> None:
        lookup.attempts += 1
        delay = retry.retry_after if retry.retry_after is not None else self._policy.backoff(lookup.attempts, self._rng)
        if retry.throttled:
            self._metrics.throttled.add()
            self._limiter.pause(delay)
        if lookup.attempts >= self._policy.max_attempts or delay > self._policy.max_retry_after_seconds:
            _fail(lookup, LookupFailed(f"Graph lookups kept failing ({retry.cause}) after {lookup.attempts} attempts"))
            return
        self._metrics.retries.add(cause=retry.cause)
        if retry.throttled:
            # The paused limiter holds the next batch until the window ends.
            self._requeue(lookup)
        else:
            self._spawn(self._requeue_after(lookup, delay))

    async def _requeue_after(self, lookup: _Lookup, delay: float) -> None:
        try:
            await self._clock.sleep(delay)
        except asyncio.CancelledError:
            _fail(lookup, _stopping())
            raise
        self._requeue(lookup)

    def _requeue(self, lookup: _Lookup) -> None:
        if not lookup.future.done():
            lookup.queued_at = _now()
            self._enqueue(lookup)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


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
