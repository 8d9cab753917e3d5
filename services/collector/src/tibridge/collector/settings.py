"""The collector's settings: the Log Analytics workspace and its limits, what to read and how, the watermark store."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from tibridge.collector.kql import HASH_KEY_PREFIX, SUPPORTED_OBSERVABLE_KEYS, IndicatorTable, string_literal
from tibridge.collector.normalise import kind_of_key
from tibridge.common.sentinel import MDTI_SOURCE_SYSTEMS
from tibridge.common.settings import Section, ServiceSettings


class RunMode(StrEnum):
    ONCE = "once"  # one pass, then return (a CronJob / Container Apps job)
    LOOP = "loop"  # a pass every interval until stopped


class CheckpointKind(StrEnum):
    FILE = "file"
    BLOB = "blob"


class LogAnalyticsSettings(Section):
    """TIBRIDGE_LOGANALYTICS_*: the workspace and the query API's limits."""

    endpoint: str = Field(
        "https://api.loganalytics.io",
        description="Log Analytics query endpoint (sovereign clouds: e.g. https://api.loganalytics.azure.cn).",
    )
    workspace_id: str = Field(
        description="The Sentinel workspace's Log Analytics workspace ID (a GUID, from the workspace's Overview)."
    )
    query_timeout_seconds: int = Field(
        180, ge=10, le=600, description="Server-side limit of one Log Analytics query (the API allows up to 600)."
    )
    query_attempts: int = Field(
        6, ge=1, le=20, description="Attempts per query on 429 and 5xx answers and timeouts (honouring Retry-After)."
    )
    retry_base_delay_seconds: float = Field(
        1.0, ge=0, le=60, description="First backoff between query attempts; it doubles per attempt."
    )
    row_cap: int = Field(
        500_000,
        ge=2,
        description="Rows the query API returns at most; a window that reaches it is split and read again.",
    )
    max_concurrent_queries: int = Field(
        5, ge=1, le=5, description="Queries in flight at once (Log Analytics allows 5 per identity)."
    )
    requests_per_30_seconds: int = Field(
        200, ge=1, le=200, description="Queries sent per 30 s at most, retries included (Log Analytics allows 200)."
    )

    @field_validator("workspace_id")
    @classmethod
    def _workspace_is_a_guid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            raise ValueError("must be the workspace ID, a GUID like 5a4db0c5-0000-4000-8000-000000000001") from None

    @property
    def over_http(self) -> bool:
        return self.endpoint.startswith("http://")


class CollectingSettings(Section):
    """TIBRIDGE_COLLECTOR_*: what a pass reads, how it cuts the span into windows, and how often it runs."""

    table: IndicatorTable = Field(
        IndicatorTable.NEW,
        description="`new` reads ThreatIntelIndicators; `legacy` reads ThreatIntelligenceIndicator (history only).",
    )
    source_systems: Annotated[list[str], NoDecode] = Field(
        list(MDTI_SOURCE_SYSTEMS),
        description=(
            "Comma-separated (or JSON list of) SourceSystem values to read; default: the connectors of Microsoft "
            "Threat Intelligence (formerly MDTI)."
        ),
    )
    observable_keys: Annotated[list[str], NoDecode] = Field(
        list(SUPPORTED_OBSERVABLE_KEYS),
        description=(
            "Comma-separated (or JSON list of) ObservableKey values to read; `file:hashes.` reads every file hash "
            "key (MD5, SHA-1, SHA-256, SHA-512, in any spelling); default: all supported."
        ),
    )
    reject_non_global_ips: bool = Field(
        True, description="Refuse private, loopback, link-local and reserved IP addresses."
    )
    mode: RunMode = Field(
        RunMode.ONCE, description="`once`: one pass, then exit (CronJob); `loop`: a pass every interval."
    )
    interval: timedelta = Field(
        timedelta(minutes=5), gt=timedelta(0), description="Time between passes in loop mode (ISO 8601, e.g. PT5M)."
    )
    since: timedelta | None = Field(
        None,
        gt=timedelta(0),
        description="Backfill: read from now minus this (ISO 8601, e.g. P30D) whatever the watermark says.",
    )
    backfill_max_rows: int | None = Field(
        1_000_000,
        ge=1,
        description=(
            "Budget of a backfill (TIBRIDGE_COLLECTOR_SINCE, --since): one that Log Analytics counts to more rows "
            "is refused before anything is read, unless confirmed; empty: no budget."
        ),
    )
    backfill_confirmed: bool = Field(
        False,
        description="Run a backfill past TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS anyway (what `--yes` sets).",
    )
    progress_interval: timedelta = Field(
        timedelta(seconds=30),
        ge=timedelta(0),
        description=(
            "A backfill not shown in a terminal logs how far it has come this often (ISO 8601; PT0S: after "
            "every window)."
        ),
    )
    initial_lookback: timedelta = Field(
        timedelta(days=14), gt=timedelta(0), description="How far back the very first pass (no watermark) reads."
    )
    overlap: timedelta = Field(
        timedelta(minutes=15),
        ge=timedelta(0),
        description="Re-read this much before the watermark, for rows ingested late (ISO 8601).",
    )
    settle_delay: timedelta = Field(
        timedelta(minutes=5), ge=timedelta(0), description="Leave the newest span of this length for the next pass."
    )
    rows_per_query: int = Field(
        10_000,
        ge=1,
        description=(
            "Rows one query reads at most once a pass has counted them: a pass first reads its whole span at once, "
            "and only a span that comes back bigger is counted and cut into windows of this many rows."
        ),
    )
    min_window: timedelta = Field(
        timedelta(seconds=1),
        gt=timedelta(0),
        description="Smallest span a too-big window is cut down to; still too big there stops the pass.",
    )
    batch_size: int = Field(500, ge=1, le=5000, description="Indicators per publish to the bus.")
    max_unsettled: int = Field(
        20_000,
        ge=1,
        description=(
            "On the in-memory bus (TIBRIDGE_BUS=memory): indicators published but not yet settled downstream at "
            "most; the collector reads on once fewer are in flight (bounds memory)."
        ),
    )
    no_rows_warning_after: timedelta = Field(
        timedelta(days=1),
        gt=timedelta(0),
        description=(
            "Warn (log, metric, readiness) once passes found no Microsoft Threat Intelligence (formerly MDTI) rows "
            "for this long (ISO 8601)."
        ),
    )

    @field_validator("source_systems", "observable_keys", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.strip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                raise ValueError("is not a valid JSON list; use a comma-separated list instead") from None
        return [part.strip() for part in value.split(",") if part.strip()]

    @field_validator("source_systems", "observable_keys")
    @classmethod
    def _quotable(cls, values: list[str]) -> list[str]:
        if not values or not all(value.strip() for value in values):
            raise ValueError("needs at least one non-empty value")
        for value in values:
            string_literal(value)  # raises, naming the character, when the value cannot be quoted
        return values

    @field_validator("observable_keys")
    @classmethod
    def _supported_keys(cls, keys: list[str]) -> list[str]:
        unsupported = [key for key in keys if key != HASH_KEY_PREFIX and kind_of_key(key) is None]
        if unsupported:
            raise ValueError(
                f"{unsupported[0]!r} is not an ObservableKey the collector can read; "
                f"supported: {', '.join(SUPPORTED_OBSERVABLE_KEYS)}"
            )
        return keys


class CheckpointSettings(Section):
    """TIBRIDGE_CHECKPOINT_*: where the watermark is kept."""

    store: CheckpointKind = Field(
        CheckpointKind.FILE, description="Where the watermark is kept: `file` or `blob` (Azure Blob Storage)."
    )
    path: Path = Field(Path(".tibridge/collector-checkpoint.json"), description="The watermark file (file store).")
    container: str = Field(
        "tibridge", min_length=3, max_length=63, description="Blob container of the watermark (blob store)."
    )
    blob: str = Field(
        "collector-checkpoint.json", min_length=1, max_length=1024, description="Blob name of the watermark."
    )
    connection_string: SecretStr | None = Field(
        None, description="Storage connection string (blob store); or set TIBRIDGE_CHECKPOINT_ACCOUNT_URL."
    )
    account_url: str | None = Field(
        None,
        description="Blob endpoint (https://<account>.blob.core.windows.net), used with the Azure credential.",
    )

    @model_validator(mode="after")
    def _blob_is_reachable(self) -> Self:
        if self.store is CheckpointKind.BLOB and not (self.connection_string or self.account_url):
            raise ValueError(
                "TIBRIDGE_CHECKPOINT_STORE=blob needs TIBRIDGE_CHECKPOINT_CONNECTION_STRING "
                "or TIBRIDGE_CHECKPOINT_ACCOUNT_URL"
            )
        return self


class CollectorSettings(ServiceSettings):
    loganalytics: LogAnalyticsSettings
    collector: CollectingSettings
    checkpoint: CheckpointSettings

    @model_validator(mode="after")
    def _endpoints(self) -> Self:
        endpoint = self.endpoint("LOGANALYTICS_ENDPOINT", self.loganalytics.endpoint)
        self.loganalytics = self.loganalytics.model_copy(update={"endpoint": endpoint})
        if self.checkpoint.account_url is not None:
            account_url = self.endpoint("CHECKPOINT_ACCOUNT_URL", self.checkpoint.account_url)
            self.checkpoint = self.checkpoint.model_copy(update={"account_url": account_url})
        if self.checkpoint.connection_string is not None:
            blob_endpoint = blob_endpoint_of(self.checkpoint.connection_string.get_secret_value())
            if blob_endpoint is not None:
                self.endpoint("CHECKPOINT_CONNECTION_STRING (its blob endpoint)", blob_endpoint)
        return self


def blob_endpoint_of(connection_string: str) -> str | None:
    """The blob endpoint a storage connection string points at (its BlobEndpoint, or the account's default)."""
    parts = {
        name.strip().lower(): value.strip()
        for name, _, value in (part.partition("=") for part in connection_string.split(";"))
        if value.strip()
    }
    if "blobendpoint" in parts:
        return parts["blobendpoint"]
    if "accountname" in parts:
        protocol = parts.get("defaultendpointsprotocol", "https")
        return f"{protocol}://{parts['accountname']}.blob.{parts.get('endpointsuffix', 'core.windows.net')}"
    return None
