"""The collector's composition: settings → Log Analytics client and checkpoint store (`build`) → the worker
(`assemble`, also the tests' seam); `SPEC` is what a process needs to run it."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.monitor.query.aio import LogsQueryClient

from tibridge.collector.checkpoint import BlobCheckpointStore, CheckpointStore, FileCheckpointStore
from tibridge.collector.kql import HASH_KEY_PREFIX, IndicatorTable, QuerySpec
from tibridge.collector.normalise import kind_of_key
from tibridge.collector.plan import DAY, BackfillPlan, Rates, plan_backfill
from tibridge.collector.progress import BackfillProgress
from tibridge.collector.rows import RowReader
from tibridge.collector.settings import CheckpointKind, CheckpointSettings, CollectorSettings, LogAnalyticsSettings
from tibridge.collector.source import TRANSIENT_ERRORS, IndicatorSource, LogAnalyticsSource
from tibridge.collector.windows import pass_span
from tibridge.collector.worker import Collector, Deliveries, OnTheBus
from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.contracts import SCORABLE_TYPES
from tibridge.common.identity import build_credential
from tibridge.common.pacing import Engine, PaceLimits, Pacer, RequestWindow, RetryPolicy
from tibridge.common.producer import Producer
from tibridge.common.runtime import Service, ServiceName, ServiceSpec

# The storage SDK's own retries of a checkpoint read or write (its backoff starts at 15 s).
_STORAGE_RETRIES = 2
_STORAGE_TIMEOUT_SECONDS = 30
# Log Analytics' documented request window (external-apis §1): TIBRIDGE_LOGANALYTICS_REQUESTS_PER_30_SECONDS.
RATE_WINDOW_SECONDS = 30.0


async def build(
    settings: CollectorSettings,
    bus: Bus,
    resources: contextlib.AsyncExitStack,
    clock: Clock,
    *,
    progress: BackfillProgress | None = None,
) -> Service:
    """`progress`: where a backfill reports how far it has come (default: log lines)."""
    endpoints = [settings.loganalytics.endpoint]
    if settings.checkpoint.store is CheckpointKind.BLOB and settings.checkpoint.account_url:
        endpoints.append(settings.checkpoint.account_url)
    credential = build_credential(settings.credential, *endpoints)
    resources.push_async_callback(credential.close)
    source = log_analytics_source(settings, credential, resources, clock)
    store = checkpoint_store(settings.checkpoint, credential, resources)
    return assemble(settings, bus, clock, source=source, store=store, progress=progress)


def log_analytics_source(
    settings: CollectorSettings, credential: AsyncTokenCredential, resources: contextlib.AsyncExitStack, clock: Clock
) -> LogAnalyticsSource:
    """The workspace as the collector reads it (also what `tibridge preflight`, `explain` and `reconcile` read)."""
    client = logs_client(credential, settings.loganalytics)
    resources.push_async_callback(client.close)
    collecting = settings.collector
    spec = QuerySpec(collecting.table, collecting.source_systems, collecting.observable_keys)
    return LogAnalyticsSource(client, settings.loganalytics, spec, query_engine(settings.loganalytics, clock))


def reading_rates(settings: CollectorSettings, seconds_per_query: float = 0.0) -> Rates:
    """What reading Log Analytics may do by the settings (the other stages' rates are the caller's to add)."""
    return Rates(
        rows_per_query=min(settings.collector.rows_per_query, settings.loganalytics.row_cap - 1),
        concurrent_queries=settings.loganalytics.max_concurrent_queries,
        queries_per_30_seconds=settings.loganalytics.requests_per_30_seconds,
        seconds_per_query=seconds_per_query,
    )


async def count_backfill(settings: CollectorSettings, clock: Clock, rates: Rates) -> BackfillPlan | None:
    """The plan of the backfill the settings ask for (TIBRIDGE_COLLECTOR_SINCE), counted per day with the
    collector's own count query, within its limits, before anything is read; its IP and domain rows counted
    too (what the scorer asks Graph about). `rates` are the other stages'; None when the span is empty."""
    collecting = settings.collector
    span = pass_span(collecting, clock.now(), None)
    if span is None:
        return None
    scorable_keys = [key for key in collecting.observable_keys if _scorable(key)]
    async with contextlib.AsyncExitStack() as resources:
        credential = build_credential(settings.credential, settings.loganalytics.endpoint)
        resources.push_async_callback(credential.close)
        client = logs_client(credential, settings.loganalytics)
        resources.push_async_callback(client.close)
        engine = query_engine(settings.loganalytics, clock)

        def source(keys: list[str]) -> LogAnalyticsSource:
            spec = QuerySpec(collecting.table, collecting.source_systems, keys)
            return LogAnalyticsSource(client, settings.loganalytics, spec, engine)

        started = clock.monotonic()
        days = await source(collecting.observable_keys).count(span, DAY)
        seconds_per_query = clock.monotonic() - started
        scorable = None
        if collecting.table is IndicatorTable.NEW:
            scorable = await source(scorable_keys).count(span, DAY) if scorable_keys else []
    reading = reading_rates(settings, seconds_per_query)
    rates = dataclasses.replace(
        rates,
        rows_per_query=reading.rows_per_query,
        concurrent_queries=reading.concurrent_queries,
        queries_per_30_seconds=reading.queries_per_30_seconds,
        seconds_per_query=reading.seconds_per_query,
    )
    return plan_backfill(span, days, rates, scorable_days=scorable)


def logs_client(credential: AsyncTokenCredential, settings: LogAnalyticsSettings) -> LogsQueryClient:
    """The SDK's client with its own retries off (`retry_total=0`): the engine's budget is a query's only one."""
    return LogsQueryClient(credential, endpoint=settings.endpoint, retry_total=0)


def query_engine(settings: LogAnalyticsSettings, clock: Clock) -> Engine:
    """The rate-and-retry engine every query of this process goes through: Log Analytics' limits are documented,
    so its pacer is fixed at them (`TIBRIDGE_LOGANALYTICS_MAX_CONCURRENT_QUERIES` in flight,
    `TIBRIDGE_LOGANALYTICS_REQUESTS_PER_30_SECONDS` sent, retries included) rather than adaptive; a 429's
    Retry-After still pauses every query."""
    limits = PaceLimits.fixed(
        math.inf,
        settings.max_concurrent_queries,
        window=RequestWindow(settings.requests_per_30_seconds, RATE_WINDOW_SECONDS),
    )
    return Engine(
        "loganalytics",
        Pacer("loganalytics", limits, clock),
        RetryPolicy(max_attempts=settings.query_attempts, base_delay_seconds=settings.retry_base_delay_seconds),
        clock,
        transient=TRANSIENT_ERRORS,
    )


def assemble(
    settings: CollectorSettings,
    bus: Bus,
    clock: Clock,
    *,
    source: IndicatorSource,
    store: CheckpointStore,
    progress: BackfillProgress | None = None,
) -> Service:
    """The service once its adapters exist: the collector worker, not ready while its last pass failed.

    On a bus that dies with the process (the in-memory one) the watermark waits until what was read is settled
    downstream; on Service Bus, being on the bus is enough."""
    reader = RowReader(settings.collector.table, reject_non_global=settings.collector.reject_non_global_ips)
    collector = Collector(
        source,
        store,
        Producer(bus, clock),
        reader,
        settings.collector,
        clock,
        row_cap=settings.loganalytics.row_cap,
        read_ahead=settings.loganalytics.max_concurrent_queries,
        deliveries=bus if isinstance(bus, Deliveries) else OnTheBus(),
        reading=reading_rates(settings),
        progress=progress,
    )
    return Service(workers=[collector], readiness=[collector.readiness], counts=collector.counts)


def _scorable(key: str) -> bool:
    """Whether an ObservableKey names what MDTI scores: an IP address (either version) or a domain."""
    kind = kind_of_key(key) if key != HASH_KEY_PREFIX else None
    return kind is not None and (kind.observable_type is None or kind.observable_type in SCORABLE_TYPES)


def checkpoint_store(
    settings: CheckpointSettings, credential: AsyncTokenCredential, resources: contextlib.AsyncExitStack
) -> CheckpointStore:
    if settings.store is CheckpointKind.FILE:
        return FileCheckpointStore(settings.path)
    timeouts: dict[str, Any] = {
        "connection_timeout": 10,
        "read_timeout": _STORAGE_TIMEOUT_SECONDS,
        "retry_total": _STORAGE_RETRIES,
    }
    # Imported here: the Blob SDK takes half a second to import, which every file-checkpoint start would pay.
    from azure.storage.blob.aio import BlobServiceClient

    if settings.connection_string is not None:
        service = BlobServiceClient.from_connection_string(settings.connection_string.get_secret_value(), **timeouts)
    else:
        service = BlobServiceClient(str(settings.account_url), credential=credential, **timeouts)
    resources.push_async_callback(service.close)
    container = service.get_container_client(settings.container)
    return BlobCheckpointStore(container, settings.blob, timeout_seconds=_STORAGE_TIMEOUT_SECONDS)


SPEC = ServiceSpec(ServiceName.COLLECTOR, CollectorSettings, build)
