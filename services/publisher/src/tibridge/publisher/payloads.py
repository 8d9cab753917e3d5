"""The ThreatStream requests for a group of objects: an import session (approval) or an upsert (direct).

Pure: the client sends what these functions build, and the dry run writes it down.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tibridge.publisher.mapping import IntelObject, IntelStatus
from tibridge.publisher.settings import IntelClassification

IMPORT_PATH = "/v2/intelligence/import/"
UPSERT_PATH = "/v2/intelligence/"
# 100 keeps our confidence as it is rather than weighting it by ThreatStream's view of the source.
SOURCE_CONFIDENCE_WEIGHT = 100


@dataclass(frozen=True)
class WireOptions:
    classification: IntelClassification
    # Approval mode: `inactive` waits for an analyst, `active` is approved at once.
    default_state: IntelStatus


@dataclass(frozen=True)
class ThreatStreamRequest:
    method: str
    path: str
    objects: int
    form: Mapping[str, str] = field(default_factory=dict)
    json_body: Mapping[str, Any] | None = None

    def record(self) -> dict[str, Any]:
        """The request as the dry run writes it: method, path and body, never a credential."""
        return {"method": self.method, "path": self.path, "body": self.json_body or dict(self.form)}


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def import_request(
    session: IntelObject,
    values: Sequence[str],
    options: WireOptions,
    mappings: Mapping[str, str] | None = None,
) -> ThreatStreamRequest:
    """One import session: `session` states what holds for every observable of `values`, `mappings` the itype
    of each kind (default: the session object's own). An expiring session states only itypes and an expiry of
    now, which ThreatStream stores as expired."""
    form = {
        "datatext": "\n".join(values),
        "classification": str(options.classification),
        "default_state": str(options.default_state),
        "expiration_ts": timestamp(session.expiration),
        **(mappings or {session.kind.import_mapping_field: session.itype}),
        "reject_benign": "false",
    }
    if session.status is IntelStatus.INACTIVE:
        return ThreatStreamRequest("POST", IMPORT_PATH, len(values), form=form)
    form |= {
        "source_confidence_weight": str(SOURCE_CONFIDENCE_WEIGHT),
        "threat_type": session.threat_type,
        "severity": str(session.severity),
        "tags": json.dumps([tag.to_json() for tag in session.tags]),
    }
    if session.confidence is not None:
        form["confidence"] = str(session.confidence)
    return ThreatStreamRequest("POST", IMPORT_PATH, len(values), form=form)


def upsert_request(objects: Sequence[IntelObject], options: WireOptions) -> ThreatStreamRequest:
    body = {
        "meta": {
            "classification": str(options.classification),
            "source_confidence_weight": SOURCE_CONFIDENCE_WEIGHT,
            "allow_unresolved": True,
            "allow_update": True,
        },
        "objects": [upsert_object(obj) for obj in objects],
    }
    return ThreatStreamRequest("PATCH", UPSERT_PATH, len(objects), json_body=body)


def upsert_object(obj: IntelObject) -> dict[str, Any]:
    fields: dict[str, Any] = {
        obj.kind.value_field: obj.observable.value,
        "itype": obj.itype,
        "status": str(obj.status),
        "expiration_ts": timestamp(obj.expiration),
    }
    if obj.status is IntelStatus.INACTIVE:
        # Expiring touches only the state, so what an analyst may have added stays.
        return fields
    fields |= {
        "threat_type": obj.threat_type,
        "severity": str(obj.severity),
        "tags": [tag.to_json() for tag in obj.tags],
    }
    if obj.confidence is not None:
        fields["confidence"] = obj.confidence
    if obj.tlp is not None:
        fields["tlp"] = str(obj.tlp)
    return fields
