"""Composition: settings → Log Analytics client, checkpoint store, bus → the collector worker."""

from __future__ import annotations

import contextlib
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.monitor.query.aio import LogsQueryClient
from azure.storage.blob.aio import BlobServiceClient

from tibridge.collector.checkpoint import BlobCheckpointStore, CheckpointStore, FileCheckpointStore
from tibridge.collector.kql import QuerySpec
from tibridge.collector.rows import RowReader
from tibridge.collector.service import Collector, CollectorOptions
from tibridge.collector.settings import CheckpointKind, CollectorSettings
from tibridge.collector.source import LogAnalyticsSource, QueryOptions
from tibridge.collector.windows import SpanPolicy
from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.http import RetryPolicy
from tibridge.common.identity import build_credential
from tibridge.common.runtime import Service

# The storage SDK's own retries of a checkpoint read or write (its backoff starts at 15 s).
_STORAGE_RETRIES = 2
_STORAGE_TIMEOUT_SECONDS = 30


async def build(settings: CollectorSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock) -> Service:
    endpoints = [settings.loganalytics_endpoint]
    if settings.checkpoint_store is CheckpointKind.BLOB and settings.checkpoint_account_url:
        endpoints.append(settings.checkpoint_account_url)
    credential = build_credential(settings.credential, *endpoints)
    resources.push_async_callback(credential.close)
    # One retry layer for queries, ours (source.py): bounded, honouring Retry-After, on the injected clock.
    client = LogsQueryClient(credential, endpoint=settings.loganalytics_endpoint, retry_total=0)
    resources.push_async_callback(client.close)
    source = LogAnalyticsSource(
        client,
        settings.loganalytics_workspace_id,
        QuerySpec(settings.collector_table, settings.collector_source_systems, settings.collector_observable_keys),
        QueryOptions(
            timeout_seconds=settings.collector_query_timeout_seconds,
            retry=RetryPolicy(
                max_attempts=settings.collector_query_attempts,
                base_delay_seconds=settings.collector_retry_base_delay_seconds,
            ),
            allow_http=settings.loganalytics_over_http,
        ),
        clock,
    )
    collector = Collector(
        source,
        checkpoint_store(settings, credential, resources),
        bus,
        RowReader(settings.collector_table, reject_non_global=settings.collector_reject_non_global_ips),
        CollectorOptions(
            span=SpanPolicy(
                overlap=settings.collector_overlap,
                settle_delay=settings.collector_settle_delay,
                initial_lookback=settings.collector_initial_lookback,
                window=settings.collector_window,
            ),
            min_window=settings.collector_min_window,
            row_cap=settings.collector_row_cap,
            batch_size=settings.collector_batch_size,
            mode=settings.collector_mode,
            interval=settings.collector_interval,
            since=settings.collector_since,
        ),
        clock,
    )
    return Service(workers=[collector], readiness=[collector.readiness], counts=collector.counts)


def checkpoint_store(
    settings: CollectorSettings, credential: AsyncTokenCredential, resources: contextlib.AsyncExitStack
) -> CheckpointStore:
    if settings.checkpoint_store is CheckpointKind.FILE:
        return FileCheckpointStore(settings.checkpoint_path)
    timeouts: dict[str, Any] = {
        "connection_timeout": 10,
        "read_timeout": _STORAGE_TIMEOUT_SECONDS,
        "retry_total": _STORAGE_RETRIES,
    }
    if settings.checkpoint_connection_string is not None:
        service = BlobServiceClient.from_connection_string(
            settings.checkpoint_connection_string.get_secret_value(), **timeouts
        )
    else:
        service = BlobServiceClient(str(settings.checkpoint_account_url), credential=credential, **timeouts)
    resources.push_async_callback(service.close)
    container = service.get_container_client(settings.checkpoint_container)
    return BlobCheckpointStore(container, settings.checkpoint_blob, timeout_seconds=_STORAGE_TIMEOUT_SECONDS)
