"""The collector's composition: settings → Log Analytics client and checkpoint store (`build`) → the worker
(`assemble`, also the tests' seam); `SPEC` is what a process needs to run it."""

from __future__ import annotations

import contextlib
import math
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.monitor.query.aio import LogsQueryClient
from azure.storage.blob.aio import BlobServiceClient

from tibridge.collector.checkpoint import BlobCheckpointStore, CheckpointStore, FileCheckpointStore
from tibridge.collector.kql import QuerySpec
from tibridge.collector.rows import RowReader
from tibridge.collector.settings import CheckpointKind, CheckpointSettings, CollectorSettings, LogAnalyticsSettings
from tibridge.collector.source import TRANSIENT_ERRORS, IndicatorSource, LogAnalyticsSource
from tibridge.collector.worker import Collector, Deliveries, OnTheBus
from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.identity import build_credential
from tibridge.common.pacing import Engine, PaceLimits, Pacer, RequestWindow, RetryPolicy
from tibridge.common.producer import Producer
from tibridge.common.runtime import Service, ServiceName, ServiceSpec

# The storage SDK's own retries of a checkpoint read or write (its backoff starts at 15 s).
_STORAGE_RETRIES = 2
_STORAGE_TIMEOUT_SECONDS = 30
# Log Analytics' documented request window (external-apis §1): TIBRIDGE_LOGANALYTICS_REQUESTS_PER_30_SECONDS.
RATE_WINDOW_SECONDS = 30.0


async def build(settings: CollectorSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock) -> Service:
    endpoints = [settings.loganalytics.endpoint]
    if settings.checkpoint.store is CheckpointKind.BLOB and settings.checkpoint.account_url:
        endpoints.append(settings.checkpoint.account_url)
    credential = build_credential(settings.credential, *endpoints)
    resources.push_async_callback(credential.close)
    client = logs_client(credential, settings.loganalytics)
    resources.push_async_callback(client.close)
    collecting = settings.collector
    spec = QuerySpec(collecting.table, collecting.source_systems, collecting.observable_keys)
    source = LogAnalyticsSource(client, settings.loganalytics, spec, query_engine(settings.loganalytics, clock))
    store = checkpoint_store(settings.checkpoint, credential, resources)
    return assemble(settings, bus, clock, source=source, store=store)


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
    settings: CollectorSettings, bus: Bus, clock: Clock, *, source: IndicatorSource, store: CheckpointStore
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
    )
    return Service(workers=[collector], readiness=[collector.readiness], counts=collector.counts)


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
    if settings.connection_string is not None:
        service = BlobServiceClient.from_connection_string(settings.connection_string.get_secret_value(), **timeouts)
    else:
        service = BlobServiceClient(str(settings.account_url), credential=credential, **timeouts)
    resources.push_async_callback(service.close)
    container = service.get_container_client(settings.container)
    return BlobCheckpointStore(container, settings.blob, timeout_seconds=_STORAGE_TIMEOUT_SECONDS)


SPEC = ServiceSpec(ServiceName.COLLECTOR, CollectorSettings, build)
