"""The collector's settings: the workspace and table to read, windows, checkpoint store, run mode."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from tibridge.collector.kql import MDTI_SOURCE_SYSTEMS, SUPPORTED_OBSERVABLE_KEYS, IndicatorTable, string_literal
from tibridge.collector.normalise import kind_of_key
from tibridge.collector.service import RunMode
from tibridge.common.settings import ServiceSettings

LOG_ANALYTICS_ENDPOINT = "https://api.loganalytics.io"


class CheckpointKind(StrEnum):
    FILE = "file"
    BLOB = "blob"


class CollectorSettings(ServiceSettings):
    loganalytics_endpoint: str = Field(
        LOG_ANALYTICS_ENDPOINT,
        description="Log Analytics query endpoint (sovereign clouds: e.g. https://api.loganalytics.azure.cn).",
    )
    loganalytics_workspace_id: str = Field(
        description="The Sentinel workspace's Log Analytics workspace ID (a GUID, from the workspace's Overview)."
    )
    collector_table: IndicatorTable = Field(
        IndicatorTable.NEW,
        description="`new` reads ThreatIntelIndicators; `legacy` reads ThreatIntelligenceIndicator (history only).",
    )
    collector_source_systems: Annotated[list[str], NoDecode] = Field(
        list(MDTI_SOURCE_SYSTEMS),
        description="Comma-separated (or JSON list of) SourceSystem values to read; default: the MDTI connectors.",
    )
    collector_observable_keys: Annotated[list[str], NoDecode] = Field(
        list(SUPPORTED_OBSERVABLE_KEYS),
        description="Comma-separated (or JSON list of) ObservableKey values to read; default: all supported.",
    )
    collector_mode: RunMode = Field(
        RunMode.ONCE, description="`once`: one pass, then exit (CronJob); `loop`: a pass every interval."
    )
    collector_interval: timedelta = Field(
        timedelta(minutes=5), gt=timedelta(0), description="Time between passes in loop mode (ISO 8601, e.g. PT5M)."
    )
    collector_since: timedelta | None = Field(
        None,
        gt=timedelta(0),
        description="Backfill: read from now minus this (ISO 8601, e.g. P30D) whatever the watermark says.",
    )
    collector_initial_lookback: timedelta = Field(
        timedelta(days=14), gt=timedelta(0), description="How far back the very first pass (no watermark) reads."
    )
    collector_overlap: timedelta = Field(
        timedelta(minutes=15),
        ge=timedelta(0),
        description="Re-read this much before the watermark, for rows ingested late (ISO 8601).",
    )
    collector_settle_delay: timedelta = Field(
        timedelta(minutes=5), ge=timedelta(0), description="Leave the newest span of this length for the next pass."
    )
    collector_window: timedelta = Field(
        timedelta(hours=6), gt=timedelta(0), description="Largest span one query reads (ISO 8601, e.g. PT6H)."
    )
    collector_min_window: timedelta = Field(
        timedelta(seconds=1),
        gt=timedelta(0),
        description="Smallest span a too-big window is halved down to; still too big there stops the pass.",
    )
    collector_row_cap: int = Field(
        500_000, ge=2, description="Rows the query API returns at most; a window that reaches it is halved."
    )
    collector_batch_size: int = Field(500, ge=1, le=5000, description="Indicators per publish to the bus.")
    collector_reject_non_global_ips: bool = Field(
        True, description="Refuse private, loopback, link-local and reserved IP addresses."
    )
    collector_query_timeout_seconds: int = Field(
        180, ge=10, le=600, description="Server-side limit of one Log Analytics query (the API allows up to 600)."
    )
    collector_query_attempts: int = Field(
        6, ge=1, le=20, description="Attempts per query on 429 and 5xx answers and timeouts (honouring Retry-After)."
    )
    collector_retry_base_delay_seconds: float = Field(
        1.0, ge=0, le=60, description="First backoff between query attempts; it doubles per attempt."
    )
    checkpoint_store: CheckpointKind = Field(
        CheckpointKind.FILE, description="Where the watermark is kept: `file` or `blob` (Azure Blob Storage)."
    )
    checkpoint_path: Path = Field(
        Path(".tibridge/collector-checkpoint.json"), description="The watermark file (file store)."
    )
    checkpoint_container: str = Field(
        "tibridge", min_length=3, max_length=63, description="Blob container of the watermark (blob store)."
    )
    checkpoint_blob: str = Field(
        "collector-checkpoint.json", min_length=1, max_length=1024, description="Blob name of the watermark."
    )
    checkpoint_connection_string: SecretStr | None = Field(
        None, description="Storage connection string (blob store); or set TIBRIDGE_CHECKPOINT_ACCOUNT_URL."
    )
    checkpoint_account_url: str | None = Field(
        None,
        description="Blob endpoint (https://<account>.blob.core.windows.net), used with the Azure credential.",
    )

    @field_validator("loganalytics_workspace_id")
    @classmethod
    def _workspace_is_a_guid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            raise ValueError("must be the workspace ID, a GUID like 5a4db0c5-0000-4000-8000-000000000001") from None

    @field_validator("collector_source_systems", "collector_observable_keys", mode="before")
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

    @field_validator("collector_source_systems", "collector_observable_keys")
    @classmethod
    def _quotable(cls, values: list[str]) -> list[str]:
        if not values or not all(value.strip() for value in values):
            raise ValueError("needs at least one non-empty value")
        for value in values:
            string_literal(value)  # raises, naming the character, when the value cannot be quoted
        return values

    @field_validator("collector_observable_keys")
    @classmethod
    def _supported_keys(cls, keys: list[str]) -> list[str]:
        unsupported = [key for key in keys if kind_of_key(key) is None]
        if unsupported:
            raise ValueError(
                f"{unsupported[0]!r} is not an ObservableKey the collector can read; "
                f"supported: {', '.join(SUPPORTED_OBSERVABLE_KEYS)}"
            )
        return keys

    @model_validator(mode="after")
    def _endpoints_and_store(self) -> Self:
        self.loganalytics_endpoint = _checked(self, "LOGANALYTICS_ENDPOINT", self.loganalytics_endpoint)
        if self.collector_min_window > self.collector_window:
            raise ValueError("TIBRIDGE_COLLECTOR_MIN_WINDOW must not be longer than TIBRIDGE_COLLECTOR_WINDOW")
        if self.checkpoint_account_url is not None:
            self.checkpoint_account_url = _checked(self, "CHECKPOINT_ACCOUNT_URL", self.checkpoint_account_url)
        if self.checkpoint_connection_string is not None:
            blob_endpoint = blob_endpoint_of(self.checkpoint_connection_string.get_secret_value())
            if blob_endpoint is not None:
                _checked(self, "CHECKPOINT_CONNECTION_STRING (its blob endpoint)", blob_endpoint)
        if self.checkpoint_store is CheckpointKind.BLOB and not (
            self.checkpoint_connection_string or self.checkpoint_account_url
        ):
            raise ValueError(
                "TIBRIDGE_CHECKPOINT_STORE=blob needs TIBRIDGE_CHECKPOINT_CONNECTION_STRING "
                "or TIBRIDGE_CHECKPOINT_ACCOUNT_URL"
            )
        return self

    @property
    def loganalytics_over_http(self) -> bool:
        return self.loganalytics_endpoint.startswith("http://")


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


def _checked(settings: CollectorSettings, name: str, url: str) -> str:
    try:
        return settings.endpoint(url)
    except ValueError as error:
        raise ValueError(f"TIBRIDGE_{name}: {error}") from None
