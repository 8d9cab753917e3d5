"""Everything a sandbox run is made of: data, reputations, faults, credentials, limits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, SkipValidation, field_validator

from tibridge.common.contracts import Reputation
from tibridge.common.identity import SANDBOX_BEARER_TOKEN
from tibridge.sandbox.dataset import Dataset
from tibridge.sandbox.faults import Api, FaultSpec, merge_faults

LOOPBACK = "127.0.0.1"
DEFAULT_WORKSPACE_ID = "5a4db0c5-0000-4000-8000-000000000001"


class SandboxConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    host: str = Field(LOOPBACK, description="Always 127.0.0.1: the sandbox never listens beyond loopback.")
    seed: int = 7
    indicators: int = Field(2000, ge=0, description="Distinct indicator Ids to generate.")
    days: int = Field(14, ge=1, description="Rows span [anchor - days, anchor).")
    repeat_ratio: float = Field(0.3, ge=0, lt=1)
    anchor: datetime | None = Field(None, description="End of the generated data; default: now, to the hour.")
    # Serve these instead of generated rows (e.g. from --rows FILE.jsonl); already validated by its loader.
    dataset: Annotated[Dataset | None, SkipValidation] = None
    reputations: dict[str, Reputation | None] = Field(
        default_factory=dict, description="Pinned host reputations; None pins 'never seen'."
    )
    faults: dict[Api, FaultSpec] = Field(default_factory=dict)
    row_cap: int = Field(500_000, ge=1, description="Log Analytics rows per result before PartialError.")
    never_seen: Literal["404", "unknown"] = "404"
    graph_forbidden: bool = False
    threatstream_username: str = "sandbox"
    threatstream_api_key: SecretStr = SecretStr("sandbox-api-key")
    bearer_token: SecretStr = SecretStr(SANDBOX_BEARER_TOKEN)
    workspace_id: str = DEFAULT_WORKSPACE_ID
    max_objects_per_request: int = Field(10_000, ge=1, description="ThreatStream objects accepted per request.")
    retry_after_grace_seconds: float = Field(0.2, ge=0, description="Propagation grace of an announced Retry-After.")

    @field_validator("host")
    @classmethod
    def _loopback_only(cls, host: str) -> str:
        if host != LOOPBACK:
            raise ValueError(f"the sandbox binds to {LOOPBACK} only; remove the host setting")
        return host

    @field_validator("anchor")
    @classmethod
    def _aware(cls, anchor: datetime | None) -> datetime | None:
        if anchor is not None and anchor.tzinfo is None:
            raise ValueError("anchor must be timezone-aware (UTC)")
        return anchor.astimezone(UTC) if anchor else None

    @field_validator("faults", mode="before")
    @classmethod
    def _faults(cls, faults: Any) -> Any:
        return merge_faults({}, faults) if isinstance(faults, dict) else faults

    def resolved_anchor(self, now: datetime) -> datetime:
        return self.anchor or now.replace(minute=0, second=0, microsecond=0)
