"""The publisher's settings: the ThreatStream client's endpoint, credentials and limits, and how it publishes."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, model_validator

from tibridge.common.settings import Section, ServiceSettings


class PublishMode(StrEnum):
    """`approval`: import sessions an analyst approves (or auto-approved); `direct`: upsert, no queue."""

    APPROVAL = "approval"
    DIRECT = "direct"


class IntelClassification(StrEnum):
    """ThreatStream's visibility of an observable — not MDTI's reputation classification."""

    PRIVATE = "private"
    PUBLIC = "public"


class TlpSpelling(StrEnum):
    """How TLP levels are written to ThreatStream; which spelling the real service validates is unverified.

    `safe` sends only the levels both spellings share (green, amber, red): CLEAR/WHITE goes without a TLP (it
    restricts nothing) and AMBER+STRICT as red (stricter, never looser), so no request can be refused for it.
    """

    SAFE = "safe"
    TLP2 = "tlp2"  # clear, green, amber, amber+strict, red (the newest ThreatStream OpenAPI)
    TLP1 = "tlp1"  # white, green, amber, red (older documentation); amber+strict as red


class ThreatStreamSettings(Section):
    """TIBRIDGE_THREATSTREAM_*: the API, who we are to it, and the pacing and retry budget."""

    base_url: str = Field(
        "https://api.threatstream.com/api", description="ThreatStream API root, cloud or on-prem (https://<host>/api)."
    )
    username: str = Field("", description="ThreatStream user the API key belongs to.")
    api_key: SecretStr | None = Field(None, description="ThreatStream API key of that user.")
    timeout_seconds: float = Field(60.0, gt=0, le=600, description="Timeout of one ThreatStream request.")
    initial_rate_per_second: float = Field(
        5.0,
        gt=0,
        le=100,
        description="ThreatStream requests per second at start; the rate then adapts (its ceiling is not "
        "published): it grows while ThreatStream answers cleanly and is cut by every 429.",
    )
    rate_per_second: float | None = Field(
        None,
        gt=0,
        le=100,
        description="Hard cap on ThreatStream requests per second (retries included), for a quota you know; "
        "empty: only ThreatStream's 429s set the rate.",
    )
    max_attempts: int = Field(
        6, ge=1, le=20, description="Attempts per request (429, 5xx, timeouts) before its messages go back to the bus."
    )
    retry_base_delay_seconds: float = Field(
        0.5, gt=0, le=60, description="First backoff after a 5xx or timeout; it doubles per attempt, with jitter."
    )
    probe_interval_seconds: float = Field(
        30.0, gt=0, description="While ThreatStream refuses the key, how often the held request is tried again."
    )


class PublishingSettings(Section):
    """TIBRIDGE_PUBLISHER_*: how scored indicators become ThreatStream requests."""

    mode: PublishMode = Field(
        PublishMode.APPROVAL,
        description="`approval` (new intelligence in import sessions an analyst approves) or `direct` (upsert; "
        "needs 'Approve Intel').",
    )
    auto_approve: bool = Field(
        False,
        description="Approval mode: create import sessions already approved (default_state=active; needs the "
        "'Approve Import' permission) instead of leaving them for an analyst.",
    )
    batch_size: int = Field(
        1000,
        ge=1,
        le=10000,
        description="Observables to write gathered into one batch (and one ThreatStream request) at most; expiries "
        "do not count (each is a request of its own by id, or none when ThreatStream holds nothing of ours).",
    )
    batch_age_seconds: float = Field(
        120.0,
        gt=0,
        le=600,
        description="A partial batch is sent once its oldest message has waited this long while the upstream is "
        "still producing; it goes at once when nothing more is on its way.",
    )
    classification: IntelClassification = Field(
        IntelClassification.PRIVATE, description="ThreatStream visibility of what we publish: private or public."
    )
    default_lifetime_days: int = Field(
        90, ge=1, le=3650, description="Expiry of an observable whose indicator has no ValidUntil, in days."
    )
    session_expiry_slack_percent: int = Field(
        50,
        ge=0,
        le=100,
        description="Approval mode: an observable may share an import session whose expiry is later than its own "
        "ValidUntil by at most this share of its remaining lifetime (never earlier).",
    )
    session_follow_seconds: float = Field(
        600.0,
        gt=0,
        le=3600,
        description="Approval mode: how long an import session is followed (bounded, paced polling) until "
        "ThreatStream has finished processing it.",
    )
    owner_tag: str = Field(
        "tibridge",
        min_length=3,
        max_length=50,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        description="Tag stamped on everything tibridge publishes; it deactivates and updates only objects of "
        "this organisation that carry it (make it unique per deployment when several publish to one ThreatStream).",
    )
    source_name: str = Field(
        "Microsoft Threat Intelligence",
        min_length=1,
        max_length=100,
        description="Source name stamped on what we publish (a tag, so analysts can filter by it).",
    )
    tlp_spelling: TlpSpelling = Field(
        TlpSpelling.SAFE,
        description="`safe` (green, amber, red only: CLEAR sent without a TLP, AMBER+STRICT as red), `tlp2` "
        "(clear … amber+strict) or `tlp1` (white … red), as your ThreatStream validates TLP.",
    )
    dry_run_file: Path | None = Field(
        None,
        description="Write each request the publisher would send to this JSONL file instead of sending it "
        "(the messages are completed).",
    )
    max_in_flight: int = Field(
        3000,
        ge=1,
        le=20000,
        description="Unsettled messages the publisher holds at most, and so in one batch; at least the batch size, "
        "ideally twice the messages of a full batch (the next gathers while one is delivered; messages about one "
        "observable share its entry, and expiries come between the observables written). On Service Bus the "
        "locks of held messages are renewed one request at a time, so many more than this risk locks lapsing "
        "while ThreatStream is slow.",
    )

    @model_validator(mode="after")
    def _a_batch_can_fill(self) -> Self:
        if self.max_in_flight < self.batch_size:
            raise ValueError(
                f"TIBRIDGE_PUBLISHER_MAX_IN_FLIGHT ({self.max_in_flight}) must be at least "
                f"TIBRIDGE_PUBLISHER_BATCH_SIZE ({self.batch_size}), or a batch can never fill"
            )
        return self


class ReconcileSettings(Section):
    """TIBRIDGE_RECONCILE_*: how `tibridge reconcile` (and `explain`) read ThreatStream: bounded and paced, since
    ThreatStream has revoked the keys of integrations that polled without limit."""

    page_size: int = Field(
        1000, ge=1, le=1000, description="Objects per ThreatStream search page (it serves 1,000 at most)."
    )
    max_pages: int = Field(
        200,
        ge=1,
        le=10000,
        description="Search pages one reconciliation reads at most; an organisation holding more of ours than "
        "max_pages × page_size is refused rather than judged on a part.",
    )
    requests_per_second: float = Field(
        1.0,
        gt=0,
        le=50,
        description="ThreatStream requests per second reconcile and explain send at most (below "
        "TIBRIDGE_THREATSTREAM_RATE_PER_SECOND, which also applies).",
    )
    settle_seconds: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="Objects ThreatStream changed this recently are still settling (a batch or a session in "
        "flight): their values are counted but not judged.",
    )
    samples: int = Field(10, ge=0, le=1000, description="Values listed per kind of difference in the report.")


class PublisherSettings(ServiceSettings):
    threatstream: ThreatStreamSettings
    publisher: PublishingSettings
    reconcile: ReconcileSettings

    @model_validator(mode="after")
    def _threatstream_is_reachable(self) -> Self:
        base_url = self.endpoint("THREATSTREAM_BASE_URL", self.threatstream.base_url)
        self.threatstream = self.threatstream.model_copy(update={"base_url": base_url})
        if self.publisher.dry_run_file is None and (
            not self.threatstream.username or self.threatstream.api_key is None
        ):
            raise ValueError(
                "set TIBRIDGE_THREATSTREAM_USERNAME and TIBRIDGE_THREATSTREAM_API_KEY "
                "(or TIBRIDGE_PUBLISHER_DRY_RUN_FILE to only write the requests to a file)"
            )
        return self
