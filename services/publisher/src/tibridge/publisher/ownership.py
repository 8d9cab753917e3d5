"""What tibridge owns in ThreatStream, read back from ThreatStream itself. Pure: the delivery loop fetches pages.

tibridge never creates an object in order to expire it, and changes only objects it published. It recognises
them by what it stamps on every object it writes: the owner tag (`TIBRIDGE_PUBLISHER_OWNER_TAG`), under an itype
tibridge publishes, with the visibility it publishes, editable by our organisation. Entries of the same value
from other sources, owners or visibilities lack one of these and are never touched.

ThreatStream is the record, so every replica sees the same truth and nothing is lost with a process: the index
is loaded once (our active and false-positive objects, a page of 1,000 per request) and then kept current by
reading only what changed since the highest `update_id` seen (`update_id__gt=N&order_by=update_id`), which is
also how a direct upsert is confirmed (external-apis.md §3: a 2xx means the JSON was valid, confirm by search).
Inactive objects are not kept: nothing is done to them but re-publishing, which needs no id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tibridge.publisher.mapping import OUR_ITYPES
from tibridge.publisher.settings import IntelClassification, PublishingSettings

ACTIVE = "active"
FALSE_POSITIVE = "falsepos"
# What the index keeps; the first load reads only these.
KEPT_STATUSES = (ACTIVE, FALSE_POSITIVE)


@dataclass(frozen=True)
class OwnedObject:
    """One object of ours, as ThreatStream's search shows it."""

    id: int
    value: str
    itype: str
    status: str
    update_id: int
    expiration: datetime | None
    confidence: int | None
    severity: str | None
    tlp: str | None
    tags: frozenset[str]
    modified: datetime | None = None  # when ThreatStream last changed it


@dataclass(frozen=True)
class Page:
    """One search page: the objects of ours on it, the highest update id on it, and whether it was the last."""

    owned: tuple[OwnedObject, ...]
    values: frozenset[str]  # every value on the page, ours or not (what landed of an import session)
    highest_update_id: int | None
    last: bool


def read_page(body: Any, publishing: PublishingSettings) -> Page | None:
    """A search answer's page, or None when it is not shaped like one."""
    if not isinstance(body, Mapping) or not isinstance(body.get("objects"), list):
        return None
    objects = [obj for obj in body["objects"] if isinstance(obj, Mapping)]
    update_ids = [obj["update_id"] for obj in objects if isinstance(obj.get("update_id"), int)]
    return Page(
        owned=tuple(owned for owned in map(lambda obj: owned_object(obj, publishing), objects) if owned),
        values=frozenset(obj["value"] for obj in objects if isinstance(obj.get("value"), str)),
        highest_update_id=max(update_ids, default=None),
        last=_last(body.get("meta"), len(body["objects"])),
    )


def read_whitelist_page(body: Any) -> tuple[frozenset[str], bool] | None:
    """A page of the organisation's whitelist (`GET v1/orgwhitelist/`): its values and whether it was the last;
    None when it is not shaped like one."""
    entries = body.get("objects") if isinstance(body, Mapping) else None
    if not isinstance(entries, list):
        return None
    values = frozenset(str(entry["value"]) for entry in entries if isinstance(entry, Mapping) and entry.get("value"))
    meta = body.get("meta")
    return values, not (isinstance(meta, Mapping) and meta.get("next"))


def _last(meta: Any, count: int) -> bool:
    """Tastypie says whether more follow (`meta.next`); without it, only an empty page is surely the last."""
    if isinstance(meta, Mapping) and "next" in meta:
        return not meta["next"]
    return count == 0


def not_ours_because(obj: Mapping[str, Any], publishing: PublishingSettings) -> str | None:
    """Why a search object is not tibridge's to change (None when it is): the ownership rule it fails."""
    public = publishing.classification is IntelClassification.PUBLIC
    if publishing.owner_tag not in _tags(obj):
        return f"it lacks the owner tag {publishing.owner_tag!r}"
    if obj.get("itype") not in OUR_ITYPES:
        return f"its itype {obj.get('itype')!r} is not one tibridge publishes"
    if obj.get("is_public", public) is not public:
        visibility = "public" if obj.get("is_public") else "private"
        return f"it is {visibility}; tibridge publishes {publishing.classification}"
    if obj.get("is_editable", True) is False:
        return "our organisation may not edit it (another organisation's)"
    if not all(isinstance(obj.get(name), kind) for name, kind in _REQUIRED_FIELDS):
        return "ThreatStream's answer lacks its id, value, status or update_id"
    return None


_REQUIRED_FIELDS = (("id", int), ("value", str), ("status", str), ("update_id", int))


def _tags(obj: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(
        tag["name"] for tag in obj.get("tags") or () if isinstance(tag, Mapping) and isinstance(tag.get("name"), str)
    )


def owned_object(obj: Mapping[str, Any], publishing: PublishingSettings) -> OwnedObject | None:
    """The object if it is ours (stamped with our owner tag, under our itypes and visibility, editable)."""
    if not_ours_because(obj, publishing) is not None:
        return None
    tags = _tags(obj)
    meta = obj.get("meta")
    severity = meta.get("severity") if isinstance(meta, Mapping) else obj.get("severity")
    confidence = obj.get("confidence")
    return OwnedObject(
        id=obj["id"],
        value=obj["value"],
        itype=str(obj["itype"]),
        status=obj["status"],
        update_id=obj["update_id"],
        expiration=_moment(obj.get("expiration_ts")),
        confidence=confidence if isinstance(confidence, int) else None,
        severity=severity if isinstance(severity, str) else None,
        tlp=obj["tlp"] if isinstance(obj.get("tlp"), str) else None,
        tags=tags,
        modified=_moment(obj.get("modified_ts")),
    )


def _moment(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class OwnershipIndex:
    """Our active and false-positive objects by value, and the highest update id read so far."""

    def __init__(self) -> None:
        self._by_value: dict[str, dict[int, OwnedObject]] = {}
        self.watermark: int | None = None
        self.loaded = False

    def __len__(self) -> int:
        return sum(len(objects) for objects in self._by_value.values())

    def held(self, value: str) -> list[OwnedObject]:
        return list(self._by_value.get(value, {}).values())

    def apply(self, page: Page) -> None:
        """Takes in a page read in update-id order: each object's newest state replaces what was known."""
        for obj in page.owned:
            objects = self._by_value.setdefault(obj.value, {})
            objects.pop(obj.id, None)
            if obj.status in KEPT_STATUSES:
                objects[obj.id] = obj
            if not objects:
                del self._by_value[obj.value]
        if page.highest_update_id is not None:
            self.watermark = max(self.watermark or 0, page.highest_update_id)

    def forget(self, objects: Iterable[OwnedObject]) -> None:
        """Objects we learnt are not (or no longer) ours to change, e.g. ThreatStream refused an edit."""
        for obj in objects:
            held = self._by_value.get(obj.value, {})
            held.pop(obj.id, None)
            if not held:
                self._by_value.pop(obj.value, None)
