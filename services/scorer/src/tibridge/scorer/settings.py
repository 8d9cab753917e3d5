"""The scorer's settings: the Graph client's endpoint and limits, and the verdict rules, cache and concurrency."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from tibridge.common.contracts import Classification
from tibridge.common.settings import Section, ServiceSettings


class UnscorableHandling(StrEnum):
    """URLs, file hashes and emails have no MDTI reputation: drop them, or forward them unscored."""

    DROP = "drop"
    FORWARD = "forward"


class LookupMode(StrEnum):
    """How lookups reach Graph: JSON batching (20 per request), or one GET per host should `$batch` misbehave
    for this API (no public client of it uses `$batch`)."""

    BATCH = "batch"
    SINGLE = "single"


class GraphSettings(Section):
    """TIBRIDGE_GRAPH_*: Microsoft Graph's endpoint, how lookups travel, and the pacing and retry budget."""

    base_url: str = Field(
        "https://graph.microsoft.com/v1.0",
        description="Microsoft Graph base URL, up to and including the version (…/v1.0).",
    )
    lookup_mode: LookupMode = Field(
        LookupMode.BATCH,
        description="`batch` (JSON batching, 20 lookups per request) or `single` (one GET per host, should $batch "
        "misbehave); both are paced alike.",
    )
    initial_lookups_per_second: float = Field(
        500.0,
        gt=0,
        description="Lookups per second at start; the rate then adapts: it grows while Graph answers cleanly and "
        "is cut by every 429 (each item of a $batch counts).",
    )
    max_lookups_per_second: float | None = Field(
        None, gt=0, description="Hard cap on lookups per second, for a known quota; empty: only Graph's 429s set it."
    )
    max_parallel_requests: int = Field(
        100,
        ge=1,
        le=1000,
        description="Hard cap on Graph requests in flight at once; below it the number adapts to Graph's latency.",
    )
    batch_linger_seconds: float = Field(
        0.05, ge=0, le=5, description="How long a lookup waits for others to share its Graph $batch request."
    )
    request_timeout_seconds: float = Field(30.0, gt=0, description="Timeout of one Graph HTTP request.")
    max_attempts: int = Field(
        8,
        ge=1,
        le=50,
        description="Attempts per lookup (429, 5xx, timeouts; each request that carries it is one) before its "
        "message goes back to the bus.",
    )
    retry_base_delay_seconds: float = Field(
        0.5, gt=0, le=60, description="First backoff after a 5xx or timeout; it doubles per attempt, with jitter."
    )
    refusal_after_server_errors: int = Field(
        20,
        ge=2,
        le=1000,
        description="Different hosts answered HTTP 500 in a row, with no answer between, after which Graph is taken "
        "to refuse this tenant (how a missing licence was answered): the scorer pauses as for 401/403.",
    )
    probe_interval_seconds: float = Field(
        30.0, gt=0, description="While Graph refuses the scorer, how often one lookup checks whether it is fixed."
    )


class ScoringSettings(Section):
    """TIBRIDGE_SCORER_*: which verdict an indicator gets, how long reputations are reused, how much is in hand."""

    threshold: int = Field(
        # MDTI's own malicious band starts at 75.
        75,
        ge=0,
        le=100,
        description="MDTI score (0-100) at or above which an indicator is published.",
    )
    allowed_classifications: Annotated[frozenset[Classification], NoDecode] = Field(
        frozenset(),
        description="Comma-separated MDTI classifications that may be published (e.g. malicious,suspicious); "
        "empty allows any.",
    )
    unscorable: UnscorableHandling = Field(
        UnscorableHandling.DROP,
        description="What happens to URLs, file hashes and emails, which MDTI cannot score: `drop` or `forward`.",
    )
    unscorable_confidence: int = Field(
        100, ge=0, le=100, description="Confidence given to unscorable indicators forwarded unscored."
    )
    cache_ttl_seconds: float = Field(
        86400.0, gt=0, description="How long a reputation (or MDTI's 'no reputation') is reused before a new lookup."
    )
    cache_max_entries: int = Field(100_000, ge=1, description="Reputations cached at most (least recently used go).")
    # Messages wait for their lookup while a batch gathers and another is in flight (linger plus Graph's
    # latency, ~150 ms), so the messages in hand bound what one scorer settles per second (200 allow about
    # 200 / 0.15 s = 1,300/s, less than Graph answers when most are cache hits); they must also fill batches of 20.
    max_in_flight: int = Field(
        1000, ge=1, le=10000, description="Unsettled messages the scorer holds at most (fills Graph batches)."
    )
    max_concurrency: int = Field(
        1000, ge=1, le=10000, description="Messages scored at once; well above 20 so Graph batches fill up."
    )

    @field_validator("allowed_classifications", mode="before")
    @classmethod
    def _split_classifications(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value


class ScorerSettings(ServiceSettings):
    graph: GraphSettings
    scorer: ScoringSettings

    @model_validator(mode="after")
    def _graph_endpoint(self) -> Self:
        self.graph = self.graph.model_copy(update={"base_url": self.endpoint("GRAPH_BASE_URL", self.graph.base_url)})
        return self
