"""The publisher's settings (environment variables prefixed TIBRIDGE_)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator

from tibridge.common.settings import ServiceSettings

DEFAULT_BASE_URL = "https://api.threatstream.com/api"


class PublishMode(StrEnum):
    """`approval`: import sessions an analyst approves (or auto-approved); `direct`: upsert, no queue."""

    APPROVAL = "approval"
    DIRECT = "direct"


class IntelClassification(StrEnum):
    """ThreatStream's visibility of an observable — not MDTI's reputation classification."""

    PRIVATE = "private"
    PUBLIC = "public"


class PublisherSettings(ServiceSettings):
    threatstream_base_url: str = Field(
        DEFAULT_BASE_URL, description="ThreatStream API root, cloud or on-prem (https://<host>/api)."
    )
    threatstream_username: str = Field("", description="ThreatStream user the API key belongs to.")
    threatstream_api_key: SecretStr | None = Field(None, description="ThreatStream API key of that user.")
    threatstream_mode: PublishMode = Field(
        PublishMode.APPROVAL,
        description="`approval` (import sessions, analyst approval) or `direct` (upsert; needs 'Approve Intel').",
    )
    threatstream_auto_approve: bool = Field(
        False,
        description="Approval mode: create import sessions already approved (default_state=active; needs the "
        "'Approve Import' permission) instead of leaving them for an analyst.",
    )
    threatstream_batch_size: int = Field(
        1000, ge=1, le=10000, description="Messages gathered into one ThreatStream request at most."
    )
    threatstream_batch_age_seconds: float = Field(
        5.0, gt=0, le=600, description="A batch is sent once its oldest message has waited this long."
    )
    threatstream_classification: IntelClassification = Field(
        IntelClassification.PRIVATE, description="ThreatStream visibility of what we publish: private or public."
    )
    threatstream_default_lifetime_days: int = Field(
        90, ge=1, le=3650, description="Expiry of an observable whose indicator has no ValidUntil, in days."
    )
    threatstream_session_expiry_days: int = Field(
        7,
        ge=1,
        le=90,
        description="Approval mode: expiries are rounded up to a multiple of this many days so observables can "
        "share an import session (at most this much later than upstream's ValidUntil).",
    )
    threatstream_source_name: str = Field(
        "Microsoft Defender Threat Intelligence",
        min_length=1,
        max_length=100,
        description="Source name stamped on what we publish (a tag, so analysts can filter by it).",
    )
    threatstream_timeout_seconds: float = Field(60.0, gt=0, le=600, description="Timeout of one ThreatStream request.")
    threatstream_rate_per_second: float = Field(
        5.0, gt=0, le=100, description="Ceiling on ThreatStream requests per second (retries included)."
    )
    threatstream_max_attempts: int = Field(
        6, ge=1, le=20, description="Attempts per request (429, 5xx, timeouts) before its messages go back to the bus."
    )
    threatstream_probe_interval_seconds: float = Field(
        30.0, gt=0, description="While ThreatStream refuses the key, how often the held batch is tried again."
    )
    threatstream_dry_run_file: Path | None = Field(
        None,
        description="Write each request the publisher would send to this JSONL file instead of sending it "
        "(the messages are completed).",
    )
    max_in_flight: int = Field(
        2000,
        ge=1,
        le=20000,
        description="Unsettled messages the publisher holds at most; at least the batch size, ideally twice it.",
    )

    @model_validator(mode="after")
    def _publisher_settings_fit(self) -> Self:
        try:
            self.threatstream_base_url = self.endpoint(self.threatstream_base_url)
        except ValueError as error:
            raise ValueError(f"TIBRIDGE_THREATSTREAM_BASE_URL: {error}") from None
        if self.threatstream_dry_run_file is None and (
            not self.threatstream_username or self.threatstream_api_key is None
        ):
            raise ValueError(
                "set TIBRIDGE_THREATSTREAM_USERNAME and TIBRIDGE_THREATSTREAM_API_KEY "
                "(or TIBRIDGE_THREATSTREAM_DRY_RUN_FILE to only write the requests to a file)"
            )
        if self.max_in_flight < self.threatstream_batch_size:
            raise ValueError(
                f"TIBRIDGE_MAX_IN_FLIGHT ({self.max_in_flight}) must be at least TIBRIDGE_THREATSTREAM_BATCH_SIZE "
                f"({self.threatstream_batch_size}), or a batch can never fill"
            )
        return self
