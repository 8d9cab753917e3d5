"""Every ThreatStream request the publisher makes, as data: import sessions, upserts, changes by id, searches,
session states and the organisation's whitelist (external-apis.md §3).

Pure: the client sends what these functions build, and the dry run writes it down. No indicator value and no
credential is ever put in a URL: searches filter by our owner tag, an update id or an import session.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from tibridge.publisher.mapping import IntelObject, Severity
from tibridge.publisher.settings import PublishingSettings

INTELLIGENCE_PATH = "/v2/intelligence/"
IMPORT_PATH = "/v2/intelligence/import/"
WHITELIST_PATH = "/v1/orgwhitelist/"
# 100 keeps our confidence as it is rather than weighting it by ThreatStream's view of the source.
SOURCE_CONFIDENCE_WEIGHT = 100
# The largest page ThreatStream serves.
PAGE_SIZE = 1000


class Operation(StrEnum):
    IMPORT = "import"  # POST v2/intelligence/import/: an import session
    UPSERT = "upsert"  # PATCH v2/intelligence/: direct upsert
    UPDATE = "update"  # PATCH v2/intelligence/{id}/: change one object
    SEARCH = "search"  # GET v2/intelligence/
    SESSION = "session"  # GET v1/importsession/{id}/
    WHITELIST = "whitelist"  # GET v1/orgwhitelist/
    APPROVE = "approve"  # PATCH v1/importsession/{id}/approve_all/ (an analyst's act; `tibridge preflight` probes it)


class Permission(StrEnum):
    """ThreatStream user rights, as its documentation names them."""

    IMPORT = "Import Intelligence"
    APPROVE_IMPORT = "Approve Import"
    APPROVE_INTEL = "Approve Intel"


@dataclass(frozen=True)
class ThreatStreamRequest:
    operation: Operation
    method: str
    path: str
    objects: int = 0
    form: Mapping[str, str] = field(default_factory=dict)
    json_body: Mapping[str, Any] | None = None
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def permission(self) -> Permission | None:
        """The right the request needs beyond reading."""
        if self.operation is Operation.IMPORT:
            return Permission.APPROVE_IMPORT if self.form.get("default_state") == "active" else Permission.IMPORT
        if self.operation in (Operation.UPSERT, Operation.UPDATE):
            return Permission.APPROVE_INTEL
        if self.operation is Operation.APPROVE:
            return Permission.APPROVE_IMPORT
        return None

    def record(self) -> dict[str, Any]:
        """The request as the dry run writes it: method, path, query and body, never a credential."""
        body = self.json_body if self.json_body is not None else dict(self.form)
        return {"method": self.method, "path": self.path, "params": dict(self.params), "body": body}


@dataclass(frozen=True)
class SessionProfile:
    """What one import session states for every observable in it."""

    threat_type: str
    severity: Severity
    confidence: int | None
    tlp: str | None
    expiration: datetime
    tags: tuple[str, ...]
    mappings: Mapping[str, str]  # ip_mapping, domain_mapping, … → itype


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def tags_json(names: Sequence[str], tlp: str | None) -> list[dict[str, str]]:
    return [{"name": name, "tlp": tlp} if tlp else {"name": name} for name in names]


def import_request(
    values: Sequence[str], profile: SessionProfile, publishing: PublishingSettings
) -> ThreatStreamRequest:
    form = {
        "datatext": "\n".join(values),
        "classification": str(publishing.classification),
        "default_state": "active" if publishing.auto_approve else "inactive",
        "source_confidence_weight": str(SOURCE_CONFIDENCE_WEIGHT),
        "threat_type": profile.threat_type,
        "severity": str(profile.severity),
        "expiration_ts": timestamp(profile.expiration),
        "tags": json.dumps(tags_json(profile.tags, profile.tlp)),
        **profile.mappings,
        "reject_benign": "false",
    }
    if profile.confidence is not None:
        form["confidence"] = str(profile.confidence)
    return ThreatStreamRequest(Operation.IMPORT, "POST", IMPORT_PATH, len(values), form=form)


def upsert_request(objects: Sequence[IntelObject], publishing: PublishingSettings) -> ThreatStreamRequest:
    body = {
        "meta": {
            "classification": str(publishing.classification),
            "source_confidence_weight": SOURCE_CONFIDENCE_WEIGHT,
            "allow_unresolved": True,
            "allow_update": True,
        },
        "objects": [upsert_object(obj) for obj in objects],
    }
    return ThreatStreamRequest(Operation.UPSERT, "PATCH", INTELLIGENCE_PATH, len(objects), json_body=body)


def upsert_object(obj: IntelObject) -> dict[str, Any]:
    fields: dict[str, Any] = {obj.kind.value_field: obj.observable.value, **changeable_fields(obj)}
    if obj.subtype is not None:
        fields["subtype"] = obj.subtype
    return fields


def changeable_fields(obj: IntelObject) -> dict[str, Any]:
    """What we state about an observable, in the fields a change by id may carry."""
    fields: dict[str, Any] = {
        "itype": obj.itype,
        "threat_type": obj.threat_type,
        "severity": str(obj.severity),
        "expiration_ts": timestamp(obj.expiration),
        "tags": tags_json(obj.tags, obj.tlp),
    }
    if obj.confidence is not None:
        fields["confidence"] = obj.confidence
    if obj.tlp is not None:
        fields["tlp"] = obj.tlp
    return fields


def update_request(object_id: int, obj: IntelObject) -> ThreatStreamRequest:
    """Brings one object of ours to what we state (and active, should it have lapsed meanwhile)."""
    body = {"status": "active", **changeable_fields(obj)}
    return ThreatStreamRequest(Operation.UPDATE, "PATCH", f"{INTELLIGENCE_PATH}{object_id}/", 1, json_body=body)


def deactivate_request(object_id: int) -> ThreatStreamRequest:
    """Expiring touches only the state, so what an analyst may have added stays."""
    path = f"{INTELLIGENCE_PATH}{object_id}/"
    return ThreatStreamRequest(Operation.UPDATE, "PATCH", path, 1, json_body={"status": "inactive"})


def owned_search(owner_tag: str, after_update_id: int | None, statuses: Sequence[str] = ()) -> ThreatStreamRequest:
    """Our objects changed after `after_update_id` (all of them, of `statuses`, without one), oldest change first."""
    params = {"tags.name": owner_tag, "order_by": "update_id", "limit": str(PAGE_SIZE)}
    if after_update_id is not None:
        params["update_id__gt"] = str(after_update_id)
    if statuses:
        params["status"] = ",".join(statuses)
    return ThreatStreamRequest(Operation.SEARCH, "GET", INTELLIGENCE_PATH, params=params)


def session_objects_search(session_id: str, after_update_id: int | None) -> ThreatStreamRequest:
    """The observables an import session created or updated: what landed of it."""
    params = {"import_session_id": session_id, "order_by": "update_id", "limit": str(PAGE_SIZE)}
    if after_update_id is not None:
        params["update_id__gt"] = str(after_update_id)
    return ThreatStreamRequest(Operation.SEARCH, "GET", INTELLIGENCE_PATH, params=params)


def session_request(session_id: str) -> ThreatStreamRequest:
    return ThreatStreamRequest(Operation.SESSION, "GET", f"/v1/importsession/{session_id}/")


def approve_request(session_id: int) -> ThreatStreamRequest:
    return ThreatStreamRequest(Operation.APPROVE, "PATCH", f"/v1/importsession/{session_id}/approve_all/")


def whitelist_request(offset: int) -> ThreatStreamRequest:
    params = {"limit": str(PAGE_SIZE), "offset": str(offset)}
    return ThreatStreamRequest(Operation.WHITELIST, "GET", WHITELIST_PATH, params=params)
