"""Everything a sandbox run is made of: data, reputations, faults, credentials, limits."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, SkipValidation, field_validator, model_validator

from tibridge.common.contracts import Reputation
from tibridge.common.identity import SANDBOX_BEARER_TOKEN
from tibridge.sandbox.dataset import Dataset
from tibridge.sandbox.faults import Api, FaultSpec, merge_faults
from tibridge.sandbox.intel import TlpRefusal
from tibridge.sandbox.reputation import HostReputation
from tibridge.sandbox.vocabulary import IntelKind, Permission, TlpVocabulary

LOOPBACK = "127.0.0.1"
DEFAULT_WORKSPACE_ID = "5a4db0c5-0000-4000-8000-000000000001"
GraphRefusal = Literal["forbidden", "security_reader", "tenant_unverified", "licence_500"]


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
    reputations: dict[str, HostReputation | Reputation | None] = Field(
        default_factory=dict, description="Pinned host reputations; None pins 'never seen'."
    )
    faults: dict[Api, FaultSpec] = Field(default_factory=dict)
    row_cap: int = Field(500_000, ge=1, description="Log Analytics rows per result before PartialError.")
    loganalytics_no_data: Literal["204", "200"] = Field(
        "204", description="How a workspace holding no rows at all answers: 204 No Content (documented) or 200."
    )
    loganalytics_max_concurrent: int | None = Field(
        5, ge=1, description="Queries one identity may run at once; one more is answered 429 (None: no limit)."
    )
    loganalytics_requests_per_window: int | None = Field(
        200, ge=1, description="Requests one identity may send per window; beyond, 429 + Retry-After."
    )
    loganalytics_window_seconds: float = Field(30.0, gt=0)
    loganalytics_forbidden: bool = Field(
        False,
        description="Every query answered 403 InsufficientAccessError, as for an identity without Log Analytics "
        "Reader on the workspace (the token itself is valid).",
    )
    never_seen: Literal["404", "unknown"] = "404"
    graph_refusal: GraphRefusal | None = Field(
        None, description="Every lookup refused as for a tenant that may not use the API (see api_graph.REFUSALS)."
    )
    threatstream_username: str = "sandbox"
    threatstream_api_key: SecretStr = SecretStr("sandbox-api-key")
    bearer_token: SecretStr = SecretStr(SANDBOX_BEARER_TOKEN)
    workspace_id: str = DEFAULT_WORKSPACE_ID
    max_objects_per_request: int = Field(10_000, ge=1, description="ThreatStream objects accepted per request.")
    threatstream_permissions: frozenset[Permission] = Field(
        frozenset(Permission), description="What tibridge's ThreatStream key may do."
    )
    threatstream_organization_id: int = 4242
    threatstream_tlp: TlpVocabulary = Field(TlpVocabulary.TLP2, description="The TLP spelling ThreatStream takes.")
    threatstream_tlp_refusal: TlpRefusal = Field(
        "object", description="A TLP of the other spelling: `object` leaves that object out, `request` is a 400."
    )
    threatstream_extra_itypes: dict[str, IntelKind] = Field(
        default_factory=dict, description="Itypes accepted besides the real vocabulary (e.g. suspicious_ipv6)."
    )
    threatstream_processing_seconds: float = Field(
        0.5, ge=0, description="How long an import session is `processing` (and an approval `approving`)."
    )
    threatstream_foreign_share: float = Field(
        0.2, ge=0, le=1, description="Share of the dataset's values with pre-existing foreign entries."
    )
    threatstream_foreign_max_values: int | None = Field(
        2000, ge=0, description="Values with foreign entries at most (None: no cap), so startup stays bounded."
    )
    threatstream_whitelist_share: float = Field(
        0.01, ge=0, le=1, description="Share of the dataset's values on the organisation's whitelist."
    )
    threatstream_whitelist: tuple[str, ...] = Field((), description="Whitelisted values besides the seeded share.")
    retry_after_grace_seconds: float = Field(0.2, ge=0, description="Propagation grace of an announced Retry-After.")

    @model_validator(mode="before")
    @classmethod
    def _graph_forbidden(cls, values: Any) -> Any:
        """`graph_forbidden=True`, the older spelling, is `graph_refusal="forbidden"`."""
        if isinstance(values, dict) and "graph_forbidden" in values:
            values = dict(values)
            if values.pop("graph_forbidden"):
                values.setdefault("graph_refusal", "forbidden")
        return values

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


def parse_settings(flags: list[str]) -> dict[str, Any]:
    """`["threatstream_tlp=tlp1", 'threatstream_permissions=["import"]']` → SandboxConfig keyword arguments
    (values JSON-decoded where they are JSON, else taken as text)."""
    settings: dict[str, Any] = {}
    for flag in flags:
        name, separator, text = flag.partition("=")
        if not separator or name not in SandboxConfig.model_fields:
            raise ValueError(f"--set {flag!r} must look like SETTING=VALUE with a SandboxConfig field as SETTING")
        try:
            settings[name] = json.loads(text)
        except json.JSONDecodeError:
            settings[name] = text
    return settings
