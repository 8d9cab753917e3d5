"""ThreatStream's intelligence store: import sessions with approval, direct upsert, search.

Identity of an observable is (value, itype). Imports always upsert (a re-import updates); a direct upsert
creates another object for an existing (value, itype) unless `allow_update` is true, and such a duplicate
is counted, so it can never go unnoticed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any


class IntelRequestError(ValueError):
    """The request is refused with 400 and this message."""


class IntelKind(StrEnum):
    IP = "ip"
    IPV6 = "ipv6"
    DOMAIN = "domain"
    URL = "url"
    HASH = "md5"  # ThreatStream files every hash kind under md5 itypes
    EMAIL = "email"


_ITYPE_PREFIXES = (
    "mal", "c2", "apt", "bot", "brute", "scan", "spam", "phish", "exploit", "compromised", "suspicious",
    "tor", "proxy", "ddos", "adware", "crypto", "hack_tool",
)  # fmt: skip
_ITYPE_SUFFIXES = {
    IntelKind.IP: "_ip",
    IntelKind.IPV6: "_ipv6",
    IntelKind.DOMAIN: "_domain",
    IntelKind.URL: "_url",
    IntelKind.HASH: "_md5",
    IntelKind.EMAIL: "_email",
}
ITYPES: Mapping[str, IntelKind] = {
    prefix + suffix: kind for prefix in _ITYPE_PREFIXES for kind, suffix in _ITYPE_SUFFIXES.items()
}
_MAPPING_FIELDS = {
    IntelKind.IP: "ip_mapping",
    IntelKind.IPV6: "ipv6_mapping",
    IntelKind.DOMAIN: "domain_mapping",
    IntelKind.URL: "url_mapping",
    IntelKind.HASH: "md5_mapping",
    IntelKind.EMAIL: "email_mapping",
}
# Keys an upsert object may carry its value under.
VALUE_FIELDS = ("value", "srcip", "ip", "domain", "url", "md5", "email")
STATUSES = ("active", "inactive", "falsepos")
SEVERITIES = ("low", "medium", "high", "very-high")
CLASSIFICATIONS = ("private", "public")
DEFAULT_EXPIRATION = timedelta(days=90)

_HEX = re.compile(r"[0-9a-fA-F]+")
_DOMAIN = re.compile(
    r"(?=.{1,253}$)(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+(?:[a-zA-Z]{2,63}|xn--[a-zA-Z0-9-]{1,59})"
)
_SEPARATORS = re.compile(r"[\s,;]+")


def classify(value: str) -> IntelKind | None:
    """What kind of observable a value is, as ThreatStream's extraction would see it."""
    if "://" in value:
        scheme, _, rest = value.partition("://")
        return IntelKind.URL if scheme.lower() in ("http", "https", "ftp") and rest[:1] not in ("", "/") else None
    if "@" in value:
        local, _, domain = value.rpartition("@")
        return IntelKind.EMAIL if local and _DOMAIN.fullmatch(domain) else None
    try:
        return IntelKind.IP if ipaddress.ip_address(value).version == 4 else IntelKind.IPV6
    except ValueError:
        pass
    if len(value) in (32, 40, 64) and _HEX.fullmatch(value):
        return IntelKind.HASH
    return IntelKind.DOMAIN if _DOMAIN.fullmatch(value) else None


@dataclass
class ObjectAttributes:
    status: str = "active"
    confidence: int | None = None
    severity: str | None = None
    classification: str = "private"
    threat_type: str | None = None
    tags: list[dict[str, str]] = field(default_factory=list)
    expiration_ts: datetime | None = None
    source_confidence_weight: int | None = None


@dataclass
class IntelObject:
    id: int
    value: str
    itype: str
    attributes: ObjectAttributes
    created_ts: datetime
    modified_ts: datetime
    import_session_id: int | None

    @property
    def status(self) -> str:
        return self.attributes.status

    def to_json(self) -> dict[str, Any]:
        attributes = self.attributes
        return {
            "id": self.id,
            "value": self.value,
            "itype": self.itype,
            "type": str(ITYPES[self.itype]),
            "status": attributes.status,
            "confidence": attributes.confidence,
            "severity": attributes.severity,
            "classification": attributes.classification,
            "threat_type": attributes.threat_type,
            "tags": attributes.tags,
            "source_confidence_weight": attributes.source_confidence_weight,
            "expiration_ts": _iso(attributes.expiration_ts),
            "created_ts": _iso(self.created_ts),
            "modified_ts": _iso(self.modified_ts),
            "import_session_id": self.import_session_id,
        }


@dataclass
class ImportSession:
    id: int
    default_state: str
    attributes: ObjectAttributes
    pending: list[tuple[str, str]]  # (value, itype) waiting for approval
    num_indicators: int
    num_rejected: int
    created_ts: datetime
    status: str = "done"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "default_state": self.default_state,
            "numIndicators": self.num_indicators,
            "numRejected": self.num_rejected,
            "numPending": len(self.pending),
            "confidence": self.attributes.confidence,
            "classification": self.attributes.classification,
            "threat_type": self.attributes.threat_type,
            "severity": self.attributes.severity,
            "expiration_ts": _iso(self.attributes.expiration_ts),
            "date": _iso(self.created_ts),
            "import_type": "datatext",
        }


@dataclass
class ImportRequest:
    datatext: str
    default_state: str
    attributes: ObjectAttributes
    itypes: Mapping[IntelKind, str]


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def _parse_time(value: Any, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise IntelRequestError(f"{name} {value!r} is not an ISO 8601 timestamp") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _parse_int(value: Any, name: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise IntelRequestError(f"{name} must be an integer from 0 to 100") from None
    if not 0 <= number <= 100:
        raise IntelRequestError(f"{name} must be an integer from 0 to 100")
    return number


def _choice(value: Any, name: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise IntelRequestError(f"{name} {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _parse_tags(value: Any, name: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise IntelRequestError(f'{name} must be JSON like [{{"name": "mdti", "tlp": "amber"}}]') from None
    if not isinstance(value, list) or not all(isinstance(tag, dict) and "name" in tag for tag in value):
        raise IntelRequestError(f'{name} must be a list like [{{"name": "mdti", "tlp": "amber"}}]')
    return [{str(k): str(v) for k, v in tag.items()} for tag in value]


def parse_attributes(fields: Mapping[str, Any], where: str, now: datetime) -> ObjectAttributes:
    """Validates the shared object fields of an import form, an upsert `meta` or one upsert object."""
    prefix = f"{where}: " if where else ""
    attributes = ObjectAttributes(expiration_ts=now + DEFAULT_EXPIRATION)
    if fields.get("status") is not None:
        attributes.status = _choice(fields["status"], f"{prefix}status", STATUSES)
    if fields.get("confidence") is not None:
        attributes.confidence = _parse_int(fields["confidence"], f"{prefix}confidence")
    if fields.get("source_confidence_weight") is not None:
        attributes.source_confidence_weight = _parse_int(
            fields["source_confidence_weight"], f"{prefix}source_confidence_weight"
        )
    if fields.get("severity") is not None:
        attributes.severity = _choice(fields["severity"], f"{prefix}severity", SEVERITIES)
    if fields.get("classification") is not None:
        attributes.classification = _choice(fields["classification"], f"{prefix}classification", CLASSIFICATIONS)
    if fields.get("threat_type") is not None:
        attributes.threat_type = str(fields["threat_type"])
    if fields.get("tags") is not None:
        attributes.tags = _parse_tags(fields["tags"], f"{prefix}tags")
    if fields.get("expiration_ts") is not None:
        attributes.expiration_ts = _parse_time(fields["expiration_ts"], f"{prefix}expiration_ts")
    return attributes


def parse_import(fields: Mapping[str, str], now: datetime) -> ImportRequest:
    """The multipart form of POST /api/v2/intelligence/import/."""
    if "url" in fields or "datatext" not in fields:
        raise IntelRequestError("send the observables in the datatext field (url and file imports are not served)")
    default_state = _choice(fields.get("default_state", "inactive"), "default_state", ("active", "inactive"))
    itypes: dict[IntelKind, str] = {}
    for kind, name in _MAPPING_FIELDS.items():
        itype = fields.get(name)
        if itype is None and kind is IntelKind.IPV6 and "ip_mapping" in fields:
            itype = fields["ip_mapping"].removesuffix("_ip") + "_ipv6"
        itype = itype or f"mal{_ITYPE_SUFFIXES[kind]}"
        if ITYPES.get(itype) is not kind:
            raise IntelRequestError(f"{name} {itype!r} is not a {kind} itype (e.g. mal{_ITYPE_SUFFIXES[kind]})")
        itypes[kind] = itype
    attributes = parse_attributes({**fields, "status": None}, "", now)
    return ImportRequest(fields["datatext"], default_state, attributes, itypes)


class IntelStore:
    def __init__(self, now: Callable[[], datetime], max_objects_per_request: int) -> None:
        self._now = now
        self.max_objects_per_request = max_objects_per_request
        self.reset()

    def reset(self) -> None:
        self.objects: dict[int, IntelObject] = {}
        self._by_key: dict[tuple[str, str], list[int]] = {}
        self._by_value: dict[str, list[int]] = {}
        self.sessions: dict[int, ImportSession] = {}
        self.created = self.updated = self.duplicates_created = self.ignored = 0

    # counts -----------------------------------------------------------------------------------

    @property
    def active(self) -> int:
        return sum(1 for obj in self.objects.values() if obj.status == "active")

    @property
    def pending_approval(self) -> int:
        return sum(len(session.pending) for session in self.sessions.values())

    # import with approval ---------------------------------------------------------------------

    def import_datatext(self, request: ImportRequest) -> ImportSession:
        found: dict[str, IntelKind] = {}
        rejected = 0
        for token in _SEPARATORS.split(request.datatext):
            token = token.strip("\"'<>()")
            if not token:
                continue
            kind = classify(token)
            if kind is None:
                rejected += 1
            else:
                found.setdefault(token, kind)
        self._check_size(len(found))
        session = ImportSession(
            id=len(self.sessions) + 1,
            default_state=request.default_state,
            attributes=request.attributes,
            pending=[(value, request.itypes[kind]) for value, kind in found.items()],
            num_indicators=len(found),
            num_rejected=rejected,
            created_ts=self._now(),
        )
        self.sessions[session.id] = session
        if request.default_state == "active":
            self.approve_all(session.id)
        return session

    def approve_all(self, session_id: int) -> ImportSession | None:
        session = self.sessions.get(session_id)
        if session is None:
            return None
        for value, itype in session.pending:
            self._apply(value, itype, _copy(session.attributes), allow_update=True, session_id=session.id)
        session.pending = []
        session.status = "approved"
        return session

    # direct upsert ----------------------------------------------------------------------------

    def upsert(self, body: Any) -> int:
        """PATCH /api/v2/intelligence/: validates everything first (a 400 applies nothing); returns the
        number of objects applied. Objects whose value is missing or does not fit the itype are ignored."""
        if not isinstance(body, dict) or not isinstance(body.get("objects"), list):
            raise IntelRequestError('the body must be JSON like {"meta": {...}, "objects": [...]}')
        meta = body.get("meta") or {}
        if not isinstance(meta, dict):
            raise IntelRequestError("meta must be an object")
        objects: list[Any] = body["objects"]
        self._check_size(len(objects))
        now = self._now()
        allow_update = meta.get("allow_update") is True
        accepted: list[tuple[str, str, ObjectAttributes]] = []
        for index, obj in enumerate(objects):
            where = f"objects[{index}]"
            if not isinstance(obj, dict):
                raise IntelRequestError(f"{where} is not an object")
            itype = obj.get("itype")
            if not itype:
                raise IntelRequestError(f"{where} has no itype; every object needs one (e.g. mal_ip)")
            if itype not in ITYPES:
                raise IntelRequestError(f"{where} has an unknown itype {itype!r}")
            attributes = parse_attributes({**meta, **obj}, where, now)
            value = next((obj[name] for name in VALUE_FIELDS if isinstance(obj.get(name), str) and obj[name]), None)
            if value is None or classify(value) is not ITYPES[itype]:
                self.ignored += 1
                continue
            accepted.append((value, itype, attributes))
        for value, itype, attributes in accepted:
            self._apply(value, itype, attributes, allow_update=allow_update, session_id=None)
        return len(accepted)

    # search -----------------------------------------------------------------------------------

    def search(self, filters: Mapping[str, str], limit: int, offset: int) -> tuple[list[IntelObject], int]:
        """Exact matches on value, status, itype and type (the object kind)."""
        if "value" in filters:
            candidates = [self.objects[i] for i in self._by_value.get(filters["value"], [])]
        else:
            candidates = list(self.objects.values())
        fields: dict[str, Callable[[IntelObject], str]] = {
            "status": lambda obj: obj.status,
            "itype": lambda obj: obj.itype,
            "type": lambda obj: str(ITYPES[obj.itype]),
        }
        matching = [
            obj
            for obj in candidates
            if all(fields[name](obj) == wanted for name, wanted in filters.items() if name in fields)
        ]
        return matching[offset : offset + limit], len(matching)

    # ------------------------------------------------------------------------------------------

    def _check_size(self, count: int) -> None:
        if count > self.max_objects_per_request:
            raise IntelRequestError(
                f"the request carries {count} objects; at most {self.max_objects_per_request} are accepted "
                "per request — send smaller batches"
            )

    def _apply(
        self, value: str, itype: str, attributes: ObjectAttributes, *, allow_update: bool, session_id: int | None
    ) -> None:
        now = self._now()
        if attributes.expiration_ts is not None and attributes.expiration_ts <= now:
            attributes.status = "inactive"
        existing = self._by_key.get((value, itype), [])
        if existing and allow_update:
            target = self.objects[existing[-1]]
            target.attributes = attributes
            target.modified_ts = now
            target.import_session_id = session_id or target.import_session_id
            self.updated += 1
            return
        if existing:
            self.duplicates_created += 1
        new = IntelObject(len(self.objects) + 1, value, itype, attributes, now, now, session_id)
        self.objects[new.id] = new
        self._by_key.setdefault((value, itype), []).append(new.id)
        self._by_value.setdefault(value, []).append(new.id)
        self.created += 1


def _copy(attributes: ObjectAttributes) -> ObjectAttributes:
    return ObjectAttributes(**{**attributes.__dict__, "tags": list(attributes.tags)})
