"""ThreatStream's intelligence store: asynchronous import sessions, direct upsert, change by id, search.

What it holds is of two origins: objects written through the API with tibridge's key ("ours"), and foreign
entries seeded before the run (other sources of our organisation, other organisations' public entries) that
tibridge must never touch. The identity of an observable for updates is (value, itype) within the
organisation (external-apis.md §3). Time is the store's clock: sessions finish and objects expire when a
request, the stats or the control endpoints look at the store after their moment has passed.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from tibridge.sandbox.vocabulary import (
    CLASSIFICATIONS,
    HASH_SUBTYPE_BY_LENGTH,
    IMPORT_FORM_FIELDS,
    MAPPING_FIELDS,
    SEVERITIES,
    STATUSES,
    VALUE_FIELDS,
    HashSubtype,
    IntelKind,
    TlpVocabulary,
    ipv6_itype_for,
)

DEFAULT_EXPIRATION = timedelta(days=90)
TlpRefusal = Literal["object", "request"]


class IntelRequestError(ValueError):
    """The request is refused with 400 and this message."""


class IntelForbidden(PermissionError):
    """The request is refused with 403 and this message."""


class IntelNotFound(LookupError):
    """404 with this message."""


class IgnoredReason(StrEnum):
    """Why a direct upsert left an object out while answering 2xx (the JSON was valid, the object was not)."""

    NO_VALUE = "no_value"
    MISSING_ITYPE = "missing_itype"
    UNKNOWN_ITYPE = "unknown_itype"
    ITYPE_OF_ANOTHER_KIND = "itype_of_another_kind"
    VALUE_DOES_NOT_FIT = "value_does_not_fit"
    BAD_SUBTYPE = "bad_subtype"
    INVALID_FIELD = "invalid_field"
    STATUS_NOT_HONOURED = "status_not_honoured"
    EXPIRATION_IN_THE_PAST = "expiration_in_the_past"
    TLP_NOT_IN_VOCABULARY = "tlp_not_in_vocabulary"
    WHITELISTED = "whitelisted"


class RejectedReason(StrEnum):
    """Why an import session rejected an observable (counted in `numRejected`)."""

    NOT_AN_OBSERVABLE = "not_an_observable"
    NO_IPV6_ITYPE = "no_ipv6_itype_for_ip_mapping"
    WHITELISTED = "whitelisted"
    TLP_NOT_IN_VOCABULARY = "tlp_not_in_vocabulary"


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
    if len(value) in HASH_SUBTYPE_BY_LENGTH and _HEX.fullmatch(value):
        return IntelKind.HASH
    return IntelKind.DOMAIN if _DOMAIN.fullmatch(value) else None


def subtype_of(value: str) -> HashSubtype | None:
    return HASH_SUBTYPE_BY_LENGTH.get(len(value)) if classify(value) is IntelKind.HASH else None


def iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if value else None


@dataclass(frozen=True)
class StoreRules:
    """What a ThreatStream organisation enforces (the sandbox's `threatstream_*` settings)."""

    itypes: Mapping[str, IntelKind]
    tlp: TlpVocabulary = TlpVocabulary.TLP2
    tlp_refusal: TlpRefusal = "object"
    whitelist: frozenset[str] = frozenset()
    processing: timedelta = timedelta(seconds=0.5)
    max_objects_per_request: int = 10_000
    username: str = "sandbox"
    organization_id: int = 4242


@dataclass
class Attributes:
    """What an import form, an upsert `meta` or one upsert object states about the observables."""

    confidence: int | None = None
    severity: str | None = None
    is_public: bool = False
    threat_type: str | None = None
    tags: list[dict[str, str]] = field(default_factory=list)
    tlp: str | None = None
    expiration_ts: datetime | None = None
    source_confidence_weight: int | None = None

    def tlps(self) -> list[str]:
        return [value for value in (self.tlp, *(tag.get("tlp") for tag in self.tags)) if value]


@dataclass(slots=True)
class IntelObject:
    id: int
    value: str
    kind: IntelKind
    subtype: HashSubtype | None
    itype: str
    status: str
    attributes: Attributes
    source: str
    owner_organization_id: int
    created_ts: datetime
    modified_ts: datetime
    update_id: int
    import_session_id: int | None = None
    foreign: bool = False
    editable: bool = True
    # Whether the object was ever active: an object created inactive was created only to be expired.
    was_active: bool = False

    def to_json(self) -> dict[str, Any]:
        attributes = self.attributes
        return {
            "id": self.id,
            "value": self.value,
            "type": str(self.kind),
            "subtype": str(self.subtype) if self.subtype else None,
            "itype": self.itype,
            "status": self.status,
            "confidence": attributes.confidence,
            "meta": {"severity": attributes.severity or "low", "detail2": f"imported by user {self.source}"},
            "is_public": attributes.is_public,
            "tlp": attributes.tlp,
            "tags": [{"id": _tag_id(tag["name"]), **tag} for tag in attributes.tags] or None,
            "threat_type": attributes.threat_type,
            "source": self.source,
            "owner_organization_id": self.owner_organization_id,
            "is_editable": self.editable,
            "expiration_ts": iso(attributes.expiration_ts),
            "created_ts": iso(self.created_ts),
            "modified_ts": iso(self.modified_ts),
            "update_id": self.update_id,
            "import_session_id": self.import_session_id,
            "source_confidence_weight": attributes.source_confidence_weight,
            "resource_uri": f"/api/v2/intelligence/{self.id}/",
        }

    def fingerprint(self) -> bytes:
        """A digest of every byte a client can read of the object."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).digest()


def _tag_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:8]


class SessionStatus(StrEnum):
    PROCESSING = "processing"
    DONE = "done"
    APPROVING = "approving"
    APPROVED = "approved"
    ERRORS = "errors"


@dataclass
class ImportSession:
    id: int
    default_state: str
    attributes: Attributes
    tokens: list[str]
    itypes: Mapping[IntelKind, str]
    created_ts: datetime
    tlp_refused: str | None  # a TLP outside the vocabulary, refused per observable
    status: SessionStatus = SessionStatus.PROCESSING
    accepted: list[tuple[str, str]] = field(default_factory=list)  # (value, itype)
    rejected: list[tuple[str, RejectedReason]] = field(default_factory=list)
    pending: list[tuple[str, str]] = field(default_factory=list)  # accepted, waiting for approval
    ignored_fields: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The session as GET /api/v1/importsession/{id}/ shows it: counts only, no per-observable list."""
        done = self.status is not SessionStatus.PROCESSING
        return {
            "id": self.id,
            "status": str(self.status),
            "default_state": self.default_state,
            "numIndicators": len(self.accepted) if done else 0,
            "numRejected": len(self.rejected) if done else 0,
            "confidence": self.attributes.confidence,
            "is_public": self.attributes.is_public,
            "threat_type": self.attributes.threat_type,
            "severity": self.attributes.severity,
            "expiration_ts": iso(self.attributes.expiration_ts),
            "date": iso(self.created_ts),
            "import_type": "datatext",
            "resource_uri": f"/api/v1/importsession/{self.id}/",
        }

    def details(self) -> dict[str, Any]:
        """What the sandbox keeps besides (GET /_sandbox/threatstream/sessions/{id}); the real API has no such list."""
        return {
            **self.to_json(),
            "accepted": [{"value": value, "itype": itype} for value, itype in self.accepted],
            "rejected": [{"value": value, "reason": str(reason)} for value, reason in self.rejected],
            "pending": len(self.pending),
            "ignored_form_fields": list(self.ignored_fields),
        }


# --- parsing ---------------------------------------------------------------------------------------


def _parse_time(value: Any, name: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
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
    return [{str(k): str(v).lower() if k == "tlp" else str(v) for k, v in tag.items()} for tag in value]


def parse_attributes(fields: Mapping[str, Any], where: str, base: Attributes | None = None) -> Attributes:
    """The shared object fields of an import form, an upsert `meta` or one upsert object (over `base`)."""
    prefix = f"{where}: " if where else ""
    attributes = replace(base, tags=list(base.tags)) if base else Attributes()
    if fields.get("confidence") is not None:
        attributes.confidence = _parse_int(fields["confidence"], f"{prefix}confidence")
    if fields.get("source_confidence_weight") is not None:
        attributes.source_confidence_weight = _parse_int(
            fields["source_confidence_weight"], f"{prefix}source_confidence_weight"
        )
    if fields.get("severity") is not None:
        attributes.severity = _choice(fields["severity"], f"{prefix}severity", SEVERITIES)
    if fields.get("classification") is not None:
        classification = _choice(fields["classification"], f"{prefix}classification", CLASSIFICATIONS)
        attributes.is_public = classification == "public"
    if fields.get("threat_type") is not None:
        attributes.threat_type = str(fields["threat_type"])
    if fields.get("tags") is not None:
        attributes.tags = _parse_tags(fields["tags"], f"{prefix}tags")
    if fields.get("tlp") is not None:
        attributes.tlp = str(fields["tlp"]).lower()
    if fields.get("expiration_ts") is not None:
        attributes.expiration_ts = _parse_time(fields["expiration_ts"], f"{prefix}expiration_ts")
    return attributes


@dataclass(frozen=True)
class ImportRequest:
    datatext: str
    default_state: str
    attributes: Attributes
    itypes: Mapping[IntelKind, str]
    ignored_fields: tuple[str, ...]


def parse_import(fields: Mapping[str, str], rules: StoreRules) -> ImportRequest:
    """The multipart form of POST /api/v2/intelligence/import/. Fields no source documents are ignored."""
    if fields.get("url") or "datatext" not in fields:
        raise IntelRequestError("send the observables in the datatext field (url and file imports are not served)")
    default_state = _choice(fields.get("default_state", "inactive"), "default_state", ("active", "inactive"))
    itypes: dict[IntelKind, str] = {}
    for name, kinds in MAPPING_FIELDS.items():
        itype = fields.get(name)
        if itype is None:
            continue
        if rules.itypes.get(itype) is not kinds[0]:
            raise IntelRequestError(
                f"{name} {itype!r} is not a ThreatStream {kinds[0]} itype (e.g. mal{_suffix(kinds[0])})"
            )
        itypes[kinds[0]] = itype
        if IntelKind.IPV6 in kinds:
            ipv6 = ipv6_itype_for(itype, rules.itypes)
            if ipv6 is not None:
                itypes[IntelKind.IPV6] = ipv6
    for kind in IntelKind:
        if kind not in itypes and not (kind is IntelKind.IPV6 and IntelKind.IP in itypes):
            itypes[kind] = f"mal{_suffix(kind)}"
    attributes = parse_attributes({**fields, "tlp": None}, "")
    ignored = tuple(sorted(name for name in fields if name not in IMPORT_FORM_FIELDS))
    return ImportRequest(fields["datatext"], default_state, attributes, itypes, ignored)


def _suffix(kind: IntelKind) -> str:
    return "_md5" if kind is IntelKind.HASH else f"_{kind}"


# --- the store -------------------------------------------------------------------------------------


@dataclass
class WriteCounts:
    created: int = 0
    updated: int = 0
    duplicates_created: int = 0
    created_inactive: int = 0
    foreign_written: int = 0
    ignored: Counter[IgnoredReason] = field(default_factory=Counter)


class IntelStore:
    def __init__(
        self, now: Callable[[], datetime], rules: StoreRules, foreign: Callable[[], Iterable[IntelObject]] = tuple
    ) -> None:
        self._now = now
        self.rules = rules
        self._seed_foreign = foreign
        self.reset()

    def reset(self) -> None:
        """Back to the state before the run: only the foreign entries, as they were seeded."""
        self.objects: dict[int, IntelObject] = {}
        self._by_value: dict[str, list[int]] = {}
        self.sessions: dict[int, ImportSession] = {}
        self.counts = WriteCounts()
        self._update_id = 1000
        self._last_id = 0
        self._expiries: list[tuple[datetime, int]] = []
        self._session_deadlines: list[tuple[datetime, int]] = []
        for obj in self._seed_foreign():
            self._add(obj)
        self.foreign_fingerprints = {obj.id: obj.fingerprint() for obj in self.objects.values() if obj.foreign}

    # what is held -----------------------------------------------------------------------------

    def ours(self) -> Iterator[IntelObject]:
        self.advance()
        return (obj for obj in self.objects.values() if not obj.foreign)

    def foreign_changed(self) -> list[int]:
        self.advance()
        return [
            object_id
            for object_id, fingerprint in self.foreign_fingerprints.items()
            if self.objects[object_id].fingerprint() != fingerprint
        ]

    @property
    def pending_approval(self) -> int:
        self.advance()
        return sum(len(session.pending) for session in self.sessions.values())

    def by_value(self, value: str) -> list[IntelObject]:
        return [self.objects[object_id] for object_id in self._by_value.get(value, [])]

    # time -------------------------------------------------------------------------------------

    def advance(self) -> None:
        """Finishes the sessions and expires the objects whose moment has come."""
        now = self._now()
        while self._session_deadlines and self._session_deadlines[0][0] <= now:
            _, session_id = heapq.heappop(self._session_deadlines)
            self._finish(self.sessions[session_id])
        while self._expiries and self._expiries[0][0] <= now:
            moment, object_id = heapq.heappop(self._expiries)
            obj = self.objects[object_id]
            if obj.attributes.expiration_ts == moment and obj.status == "active":
                obj.status = "inactive"
                self._touch(obj)

    # import sessions --------------------------------------------------------------------------

    def import_datatext(self, request: ImportRequest) -> ImportSession:
        self.advance()
        now = self._now()
        attributes = request.attributes
        if attributes.expiration_ts is None:
            attributes.expiration_ts = now + DEFAULT_EXPIRATION
        elif attributes.expiration_ts <= now:
            raise IntelRequestError(
                f"expiration_ts {iso(attributes.expiration_ts)} is in the past; an import does not expire "
                "observables: find them and PATCH /api/v2/intelligence/{id}/ instead"
            )
        tlp_refused = self._refused_tlp(attributes, "the import form")
        stripped = (raw.strip("\"'<>()") for raw in _SEPARATORS.split(request.datatext))
        tokens = list(dict.fromkeys(token for token in stripped if token))
        self._check_size(len(tokens))
        session = ImportSession(
            id=len(self.sessions) + 1,
            default_state=request.default_state,
            attributes=attributes,
            tokens=tokens,
            itypes=request.itypes,
            created_ts=now,
            tlp_refused=tlp_refused,
            ignored_fields=request.ignored_fields,
        )
        self.sessions[session.id] = session
        heapq.heappush(self._session_deadlines, (now + self.rules.processing, session.id))
        self.advance()  # a processing time of zero finishes at once
        return session

    def approve_all(self, session_id: int) -> ImportSession:
        self.advance()
        session = self._session(session_id)
        if session.status is SessionStatus.DONE and session.pending:
            session.status = SessionStatus.APPROVING
            heapq.heappush(self._session_deadlines, (self._now() + self.rules.processing, session.id))
            self.advance()
        return session

    def session(self, session_id: int) -> ImportSession:
        self.advance()
        return self._session(session_id)

    def _session(self, session_id: int) -> ImportSession:
        session = self.sessions.get(session_id)
        if session is None:
            raise IntelNotFound(f"No import session {session_id}.")
        return session

    def _finish(self, session: ImportSession) -> None:
        if session.status is SessionStatus.APPROVING:
            self._apply_session(session)
            return
        for token in session.tokens:
            kind = classify(token)
            itype = session.itypes.get(kind) if kind else None
            if kind is None:
                session.rejected.append((token, RejectedReason.NOT_AN_OBSERVABLE))
            elif itype is None:
                session.rejected.append((token, RejectedReason.NO_IPV6_ITYPE))
            elif session.tlp_refused is not None:
                session.rejected.append((token, RejectedReason.TLP_NOT_IN_VOCABULARY))
            elif token in self.rules.whitelist:
                session.rejected.append((token, RejectedReason.WHITELISTED))
            else:
                session.accepted.append((token, itype))
        session.pending = list(session.accepted)
        if session.default_state == "active":
            self._apply_session(session)
        else:
            session.status = SessionStatus.DONE if session.accepted or not session.rejected else SessionStatus.ERRORS

    def _apply_session(self, session: ImportSession) -> None:
        for value, itype in session.pending:
            attributes = replace(session.attributes, tags=list(session.attributes.tags))
            self._write(value, itype, subtype_of(value), attributes, allow_update=True, session_id=session.id)
        session.pending = []
        session.status = SessionStatus.APPROVED

    # direct upsert ----------------------------------------------------------------------------

    def upsert(self, body: Any) -> int:
        """PATCH /api/v2/intelligence/: a structurally wrong body is 400 and applies nothing; an object whose
        content ThreatStream would not take is left out (and counted) while the rest lands. Returns how many
        objects were applied."""
        self.advance()
        if not isinstance(body, dict) or not isinstance(body.get("objects"), list):
            raise IntelRequestError('the body must be JSON like {"meta": {...}, "objects": [...]}')
        meta = body.get("meta") or {}
        if not isinstance(meta, dict):
            raise IntelRequestError("meta must be an object")
        objects: list[Any] = body["objects"]
        self._check_size(len(objects))
        if any(not isinstance(obj, dict) for obj in objects):
            index = next(i for i, obj in enumerate(objects) if not isinstance(obj, dict))
            raise IntelRequestError(f"objects[{index}] is not an object")
        base = parse_attributes({**meta, "status": None}, "meta")
        if meta.get("status") not in (None, "active"):
            raise IntelRequestError(
                "meta.status is not honoured by a bulk upsert; change an observable's status with "
                "PATCH /api/v2/intelligence/{id}/"
            )
        self._refused_tlp(base, "meta", per_object=False)
        allow_update = meta.get("allow_update") is True
        accepted: list[tuple[str, str, HashSubtype | None, Attributes]] = []
        for index, obj in enumerate(objects):
            outcome = self._judge_object(obj, f"objects[{index}]", base)
            if isinstance(outcome, IgnoredReason):
                self.counts.ignored[outcome] += 1
            else:
                accepted.append(outcome)
        for value, itype, subtype, attributes in accepted:
            self._write(value, itype, subtype, attributes, allow_update=allow_update, session_id=None)
        return len(accepted)

    def _judge_object(
        self, obj: Mapping[str, Any], where: str, base: Attributes
    ) -> IgnoredReason | tuple[str, str, HashSubtype | None, Attributes]:
        keyed = [(name, obj[name]) for name in VALUE_FIELDS if name in obj]
        if len(keyed) != 1 or not isinstance(keyed[0][1], str) or not keyed[0][1]:
            return IgnoredReason.NO_VALUE
        key, value = keyed[0]
        kind = VALUE_FIELDS[key]
        itype = obj.get("itype")
        if not itype:
            return IgnoredReason.MISSING_ITYPE
        if itype not in self.rules.itypes:
            return IgnoredReason.UNKNOWN_ITYPE
        if self.rules.itypes[itype] is not kind:
            return IgnoredReason.ITYPE_OF_ANOTHER_KIND
        if classify(value) is not kind:
            return IgnoredReason.VALUE_DOES_NOT_FIT
        subtype: HashSubtype | None = None
        if kind is IntelKind.HASH and obj.get("subtype") is not None:
            if obj["subtype"] != subtype_of(value):
                return IgnoredReason.BAD_SUBTYPE
            subtype = HashSubtype(obj["subtype"])
        if obj.get("status") not in (None, "active"):
            return IgnoredReason.STATUS_NOT_HONOURED
        try:
            attributes = parse_attributes(obj, where, base)
        except IntelRequestError:
            return IgnoredReason.INVALID_FIELD
        if attributes.expiration_ts is None:
            attributes.expiration_ts = self._now() + DEFAULT_EXPIRATION
        elif attributes.expiration_ts <= self._now():
            return IgnoredReason.EXPIRATION_IN_THE_PAST
        if self._refused_tlp(attributes, where, per_object=True) is not None:
            return IgnoredReason.TLP_NOT_IN_VOCABULARY
        if value in self.rules.whitelist:
            return IgnoredReason.WHITELISTED
        return value, itype, subtype, attributes

    # change by id -----------------------------------------------------------------------------

    _PATCHABLE = frozenset({"status", "expiration_ts", "confidence", "severity", "tags", "tlp", "threat_type", "itype"})

    def patch(self, object_id: int, body: Any) -> IntelObject:
        """PATCH /api/v2/intelligence/{id}/: changes one object, which must be our organisation's."""
        self.advance()
        obj = self.objects.get(object_id)
        if obj is None:
            raise IntelNotFound(f"No intelligence object {object_id}.")
        if not obj.editable:
            raise IntelForbidden(
                f"Intelligence object {object_id} belongs to another organization; it cannot be edited."
            )
        if not isinstance(body, dict) or not body:
            raise IntelRequestError('send a JSON object of the fields to change, e.g. {"status": "inactive"}')
        unknown = sorted(set(body) - self._PATCHABLE)
        if unknown:
            raise IntelRequestError(
                f"{', '.join(unknown)} cannot be changed here; change {', '.join(sorted(self._PATCHABLE))}"
            )
        status = _choice(body["status"], "status", STATUSES) if "status" in body else obj.status
        itype = body.get("itype", obj.itype)
        if self.rules.itypes.get(itype) is not obj.kind:
            raise IntelRequestError(f"itype {itype!r} is not a ThreatStream {obj.kind} itype")
        attributes = parse_attributes(body, "", obj.attributes)
        self._refused_tlp(attributes, "the body", per_object=False)
        obj.status, obj.itype, obj.attributes = status, itype, attributes
        obj.was_active = obj.was_active or status == "active"
        self._touch(obj)
        self.advance()  # an expiration_ts already past takes effect now
        return obj

    # search -----------------------------------------------------------------------------------

    def search(self, query: Mapping[str, str], limit: int, offset: int) -> tuple[list[IntelObject], int]:
        """GET /api/v2/intelligence/ filtered by `query` (already checked by `check_search`)."""
        self.advance()
        if "value" in query:
            candidates = self.by_value(query["value"])
        elif "id" in query:
            candidates = [self.objects[i] for i in (_int(query["id"], "id"),) if i in self.objects]
        else:
            candidates = list(self.objects.values())
        matching = [obj for obj in candidates if all(test(obj) for test in _filters(query))]
        if query.get("order_by") in ("update_id", "-update_id"):
            matching.sort(key=lambda obj: obj.update_id, reverse=query["order_by"].startswith("-"))
        return matching[offset : offset + limit], len(matching)

    # ------------------------------------------------------------------------------------------

    def _refused_tlp(self, attributes: Attributes, where: str, *, per_object: bool = True) -> str | None:
        """A TLP outside the vocabulary: returned when refused per object, a 400 when the request is refused
        (or when it is stated for the whole request and cannot be refused per object)."""
        names = self.rules.tlp.names
        refused = next((tlp for tlp in attributes.tlps() if tlp not in names), None)
        if refused is not None and (self.rules.tlp_refusal == "request" or not per_object):
            raise IntelRequestError(f"{where}: TLP {refused!r} is not one of {', '.join(names)}")
        return refused

    def _check_size(self, count: int) -> None:
        if count > self.rules.max_objects_per_request:
            raise IntelRequestError(
                f"the request carries {count} objects; at most {self.rules.max_objects_per_request} are accepted "
                "per request — send smaller batches"
            )

    def _write(
        self,
        value: str,
        itype: str,
        subtype: HashSubtype | None,
        attributes: Attributes,
        *,
        allow_update: bool,
        session_id: int | None,
    ) -> None:
        now = self._now()
        existing = [
            obj
            for obj in self.by_value(value)
            if obj.itype == itype and obj.owner_organization_id == self.rules.organization_id
        ]
        if existing and allow_update:
            target = existing[-1]
            target.attributes, target.status, target.was_active = attributes, "active", True
            target.subtype = subtype or target.subtype
            target.import_session_id = session_id or target.import_session_id
            self.counts.updated += 1
            self.counts.foreign_written += target.foreign
            self._touch(target)
            return
        if existing:
            self.counts.duplicates_created += 1
        self._add_ours(value, itype, subtype, attributes, now, session_id)
        self.counts.created += 1

    def plant(self, value: str, itype: str, attributes: Attributes) -> IntelObject:
        """An active object of our organisation written behind the API's back (drift a reconciliation must find)."""
        return self._add_ours(value, itype, subtype_of(value), attributes, self._now(), None)

    def _add_ours(
        self,
        value: str,
        itype: str,
        subtype: HashSubtype | None,
        attributes: Attributes,
        now: datetime,
        session_id: int | None,
    ) -> IntelObject:
        """A new active object of our organisation."""
        self._update_id += 1
        obj = IntelObject(
            id=self._last_id + 1,
            value=value,
            kind=classify(value) or IntelKind.DOMAIN,
            subtype=subtype,
            itype=itype,
            status="active",
            attributes=attributes,
            source=self.rules.username,
            owner_organization_id=self.rules.organization_id,
            created_ts=now,
            modified_ts=now,
            update_id=self._update_id,
            import_session_id=session_id,
            was_active=True,
        )
        self._add(obj)
        return obj

    def remove(self, object_id: int) -> None:
        """An object deleted behind the API's back (drift a reconciliation must find)."""
        obj = self.objects.pop(object_id)
        self._by_value[obj.value].remove(object_id)

    def _add(self, obj: IntelObject) -> None:
        self.objects[obj.id] = obj
        self._last_id = max(self._last_id, obj.id)
        self._by_value.setdefault(obj.value, []).append(obj.id)
        self._update_id = max(self._update_id, obj.update_id)
        if obj.attributes.expiration_ts is not None:
            heapq.heappush(self._expiries, (obj.attributes.expiration_ts, obj.id))

    def _touch(self, obj: IntelObject) -> None:
        self._update_id += 1
        obj.update_id = self._update_id
        obj.modified_ts = self._now()
        if obj.attributes.expiration_ts is not None:
            heapq.heappush(self._expiries, (obj.attributes.expiration_ts, obj.id))


# --- search filters --------------------------------------------------------------------------------

SEARCH_FILTERS = frozenset(
    {"value", "id", "status", "itype", "type", "subtype", "source", "tags.name", "is_public", "import_session_id",
     "update_id__gt", "order_by"}
)  # fmt: skip
ORDERINGS = ("update_id", "-update_id")


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise IntelRequestError(f"{name} must be an integer") from None


def check_search(query: Mapping[str, str]) -> None:
    """Refuses what a Tastypie resource refuses: filters it does not offer, and malformed values."""
    unknown = sorted(set(query) - SEARCH_FILTERS - {"limit", "offset"})
    if unknown:
        raise IntelRequestError(
            f"{', '.join(unknown)} is not a filter of /api/v2/intelligence/; use {', '.join(sorted(SEARCH_FILTERS))}"
        )
    if query.get("order_by") not in (None, *ORDERINGS):
        raise IntelRequestError(f"order_by must be one of {', '.join(ORDERINGS)}")
    for name in ("id", "update_id__gt", "import_session_id"):
        if name in query:
            _int(query[name], name)
    if query.get("is_public") not in (None, "true", "false"):
        raise IntelRequestError("is_public must be true or false")


_EXACT_FILTERS: Mapping[str, Callable[[IntelObject], str]] = {
    "itype": lambda obj: obj.itype,
    "type": lambda obj: str(obj.kind),
    "subtype": lambda obj: str(obj.subtype),
    "source": lambda obj: obj.source,
}


def _equals(read: Callable[[IntelObject], str], wanted: str) -> Callable[[IntelObject], bool]:
    return lambda obj: read(obj) == wanted


def _filters(query: Mapping[str, str]) -> list[Callable[[IntelObject], bool]]:
    tests: list[Callable[[IntelObject], bool]] = []
    if "status" in query:
        statuses = set(query["status"].split(","))
        tests.append(lambda obj: obj.status in statuses)
    for name, read in _EXACT_FILTERS.items():
        if name in query:
            tests.append(_equals(read, query[name]))
    if "tags.name" in query:
        tag = query["tags.name"]
        tests.append(lambda obj: any(t["name"] == tag for t in obj.attributes.tags))
    if "is_public" in query:
        public = query["is_public"] == "true"
        tests.append(lambda obj: obj.attributes.is_public is public)
    if "import_session_id" in query:
        session_id = int(query["import_session_id"])
        tests.append(lambda obj: obj.import_session_id == session_id)
    if "update_id__gt" in query:
        floor = int(query["update_id__gt"])
        tests.append(lambda obj: obj.update_id > floor)
    return tests
