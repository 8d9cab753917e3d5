"""What `tibridge explain` and `tibridge reconcile` read, through the services' own adapters and rules: Sentinel's
rows (the collector's query, planned by volume as the collector plans), their normalisation (the collector's row
reader), reputations (the scorer's paced Graph batcher behind its cache) and verdicts (the scorer's rules), and
what ThreatStream holds (the publisher's gateway, searches and ownership rules), bounded and paced."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from tibridge.cli.pipeline import PipelineSettings
from tibridge.collector.app import checkpoint_store, log_analytics_source
from tibridge.collector.rows import Row, RowReader, RowRejected
from tibridge.collector.settings import CollectorSettings
from tibridge.collector.source import IndicatorSource
from tibridge.collector.windows import Window, bin_size_for, pass_span, plan_from_counts
from tibridge.collector.worker import BYTES_PER_ROW
from tibridge.common.clock import Clock
from tibridge.common.consumer import DependencyUnavailable, PermanentFailure, TryLater
from tibridge.common.contracts import IndicatorCollected, IndicatorScored, Reputation
from tibridge.common.identity import build_credential
from tibridge.common.metrics import Tally
from tibridge.publisher.app import gateway_for
from tibridge.publisher.ownership import KEPT_STATUSES, OwnedObject, read_page, read_whitelist_page
from tibridge.publisher.payloads import PAGE_SIZE, owned_search, whitelist_request
from tibridge.publisher.settings import PublisherSettings
from tibridge.publisher.threatstream import Gateway, Outcome
from tibridge.scorer.app import graph_reputations
from tibridge.scorer.cache import SingleFlightCache
from tibridge.scorer.settings import ScorerSettings
from tibridge.scorer.verdicts import decide, needs_lookup


class StateError(Exception):
    """A source could not be read completely; the message says what to fix. Nothing is judged on a part."""


@dataclass(frozen=True)
class SentinelRead:
    window: Window
    rows: list[Row]


@dataclass(frozen=True)
class Normalised:
    row: Row
    result: IndicatorCollected | RowRejected


async def sentinel_span(settings: CollectorSettings, resources: contextlib.AsyncExitStack, clock: Clock) -> Window:
    """What the pipeline has read so far: the collector's first-pass span (TIBRIDGE_COLLECTOR_INITIAL_LOOKBACK
    back), up to the watermark — rows after it are not collected yet, so nothing can be expected of them."""
    checkpoint = settings.checkpoint
    credential = build_credential(settings.credential, *([checkpoint.account_url] if checkpoint.account_url else []))
    resources.push_async_callback(credential.close)
    watermark = await checkpoint_store(checkpoint, credential, resources).load()
    now = clock.now()
    collecting = settings.collector.model_copy(update={"since": None})
    first = pass_span(collecting, now, None)
    if first is None:
        raise StateError("TIBRIDGE_COLLECTOR_SETTLE_DELAY is longer than TIBRIDGE_COLLECTOR_INITIAL_LOOKBACK")
    end = min(first.end, watermark) if watermark is not None else first.end
    return Window(first.start, max(first.start, end))


async def read_sentinel(
    settings: CollectorSettings, window: Window, resources: contextlib.AsyncExitStack, clock: Clock
) -> SentinelRead:
    """The newest row per indicator in `window`, as the collector reads a pass: the whole span in one query first,
    and a span that comes back too big counted and cut by the collector's planner into windows of at most
    TIBRIDGE_COLLECTOR_ROWS_PER_QUERY rows."""
    credential = build_credential(settings.credential, settings.loganalytics.endpoint)
    resources.push_async_callback(credential.close)
    source = log_analytics_source(settings, credential, resources, clock)
    limit, row_cap = settings.collector.rows_per_query, settings.loganalytics.row_cap
    whole = await source.read(window, max_bytes=limit * BYTES_PER_ROW)
    if whole.complete and len(whole) < row_cap:
        return SentinelRead(window, list(whole.rows()))
    size = bin_size_for(window, settings.collector.min_window)
    planned = plan_from_counts(window, await source.count(window, size), size, limit)
    rows: list[Row] = []
    for part in planned:
        rows += await _read_counted(source, part.window, row_cap)
    return SentinelRead(window, rows)


async def _read_counted(source: IndicatorSource, window: Window, row_cap: int) -> list[Row]:
    answer = await source.read(window)
    if not answer.complete or len(answer) >= row_cap:
        raise StateError(
            f"Sentinel's rows of {window.start.isoformat()} → {window.end.isoformat()} do not fit one query even "
            "after counting; lower TIBRIDGE_COLLECTOR_ROWS_PER_QUERY"
        )
    return list(answer.rows())


def normalise_rows(settings: CollectorSettings, rows: Iterable[Row], now: datetime) -> list[Normalised]:
    reader = RowReader(settings.collector.table, reject_non_global=settings.collector.reject_non_global_ips)
    return [Normalised(row, reader.read(row, now)) for row in rows]


def newest_per_indicator(normalised: Iterable[Normalised]) -> list[IndicatorCollected]:
    """One indicator per Id (windows of a planned read may each hold a copy): the newest."""
    newest: dict[str, IndicatorCollected] = {}
    for item in normalised:
        indicator = item.result
        if isinstance(indicator, IndicatorCollected):
            held = newest.get(indicator.indicator_id)
            if held is None or indicator.time_generated >= held.time_generated:
                newest[indicator.indicator_id] = indicator
    return list(newest.values())


class Scoring:
    """The scorer's verdict rules over reputations from its Graph batcher (paced by the pacing engine), behind its
    cache: each host is looked up once per run."""

    def __init__(self, settings: ScorerSettings, resources: contextlib.AsyncExitStack, clock: Clock) -> None:
        self._rules = settings.scorer
        self._batcher = graph_reputations(settings, resources, clock)
        self._cache: SingleFlightCache[Reputation | None] = SingleFlightCache(
            max_entries=settings.scorer.cache_max_entries,
            ttl_seconds=settings.scorer.cache_ttl_seconds,
            clock=clock,
            lookups=Tally("tibridge.reconcile.lookups", "Reputation lookups of tibridge reconcile and explain"),
        )
        self._concurrency = asyncio.Semaphore(settings.scorer.max_concurrency)

    @property
    def lookups(self) -> int:
        return self._batcher.counts().items

    @property
    def requests(self) -> int:
        return self._batcher.counts().requests

    async def reputation(self, indicator: IndicatorCollected) -> Reputation | None:
        if not needs_lookup(indicator):
            return None
        host = indicator.observable.value
        async with self._concurrency:
            try:
                return await self._cache.get(indicator.observable.key, lambda: self._batcher.lookup(host))
            except (DependencyUnavailable, TryLater, PermanentFailure) as error:
                raise StateError(f"no reputation for {host}: {error}") from None

    async def score(self, indicator: IndicatorCollected) -> IndicatorScored:
        return decide(indicator, await self.reputation(indicator), self._rules)

    async def score_all(self, indicators: Sequence[IndicatorCollected]) -> list[IndicatorScored]:
        return list(await asyncio.gather(*(self.score(indicator) for indicator in indicators)))


def reading_gateway(settings: PublisherSettings, resources: contextlib.AsyncExitStack, clock: Clock) -> Gateway:
    """The publisher's gateway at the reconciliation's pace, a hard cap (never above the publisher's own cap)."""
    cap = settings.threatstream.rate_per_second
    rate = settings.reconcile.requests_per_second if cap is None else min(cap, settings.reconcile.requests_per_second)
    threatstream = settings.threatstream.model_copy(
        update={
            "rate_per_second": rate,
            "initial_rate_per_second": min(rate, settings.threatstream.initial_rate_per_second),
        }
    )
    return gateway_for(settings.model_copy(update={"threatstream": threatstream}), resources, clock)


@dataclass(frozen=True)
class OwnedRead:
    objects: list[OwnedObject]
    pages: int


async def read_owned(settings: PublisherSettings, gateway: Gateway) -> OwnedRead:
    """Every object of ours ThreatStream holds active or as false positive, read with the stable cursor
    (`update_id__gt` + `order_by=update_id`), at most TIBRIDGE_RECONCILE_MAX_PAGES pages."""
    from tibridge.publisher.reconciliation import actual_state

    limits = settings.reconcile
    pages: list[tuple[OwnedObject, ...]] = []
    after: int | None = None
    while True:
        if len(pages) >= limits.max_pages:
            raise StateError(
                f"ThreatStream holds more objects of ours than {limits.max_pages} pages of {limits.page_size} "
                "(TIBRIDGE_RECONCILE_MAX_PAGES × TIBRIDGE_RECONCILE_PAGE_SIZE); raise them to reconcile all of it"
            )
        search = owned_search(settings.publisher.owner_tag, after, KEPT_STATUSES)
        search = dataclasses.replace(search, params={**search.params, "limit": str(limits.page_size)})
        answer = await gateway.send(search)
        if answer.outcome is not Outcome.ACCEPTED:
            raise StateError(f"ThreatStream's search failed: {answer.detail}")
        page = read_page(answer.body, settings.publisher)
        if page is None:
            raise StateError("ThreatStream answered a search with something that is not a page of intelligence")
        pages.append(page.owned)
        if page.last or page.highest_update_id is None:
            return OwnedRead(actual_state(pages), len(pages))
        after = page.highest_update_id


async def read_whitelist(settings: PublisherSettings, gateway: Gateway) -> frozenset[str]:
    """The organisation's whitelist (what ThreatStream refuses), at most TIBRIDGE_RECONCILE_MAX_PAGES pages."""
    values: set[str] = set()
    for page in range(settings.reconcile.max_pages):
        answer = await gateway.send(whitelist_request(page * PAGE_SIZE))
        read = read_whitelist_page(answer.body) if answer.outcome is Outcome.ACCEPTED else None
        if read is None:
            raise StateError(f"ThreatStream's whitelist could not be read: {answer.detail}")
        values |= read[0]
        if read[1]:
            return frozenset(values)
    raise StateError("ThreatStream's whitelist is longer than TIBRIDGE_RECONCILE_MAX_PAGES pages; raise it")


def pipeline_parts(settings: PipelineSettings) -> tuple[CollectorSettings, ScorerSettings, PublisherSettings]:
    return settings.of(CollectorSettings), settings.of(ScorerSettings), settings.of(PublisherSettings)
