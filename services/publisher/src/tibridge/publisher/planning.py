"""The request planner: a batch of observables (the newest scored message about each) and what ThreatStream
holds of ours → the ThreatStream requests that make ThreatStream what it should be. Pure, table-tested.

Per observable (external-apis.md §3):
* `expire` → each active object of ours for the value is deactivated by id (`PATCH v2/intelligence/{id}/`).
  Nothing of ours → nothing to do: tibridge never creates an object in order to expire it, and never touches
  entries of the value from other sources, owners or visibilities.
* `publish`, a value ThreatStream holds no active object of ours for → direct mode: into one upsert per
  batch; approval mode: into an import session an analyst approves (as few as the session profiles need).
* `publish`, a value we already hold active → nothing when what we state is unchanged (Sentinel re-publishes
  every indicator weekly; an analyst should not approve it again); otherwise the one object is updated —
  direct mode: in the upsert (same itype) or by id (another itype); approval mode: by id, since approved
  intelligence does not go back to the analyst's queue. Other active objects of ours for the value (another
  itype) are deactivated, so one stays.
* `publish`, a value an analyst marked false positive in one of our objects → left alone.

An import session states one threat type, severity, confidence, TLP, expiry, tag list and itype per kind for
all its observables, so new observables are grouped: TLP and threat type exactly (a marking is never changed),
one itype per kind (`ip_mapping` covers IPv4 and IPv6 alike); confidence and severity are the lowest of the
session (never overstated); the expiry is the latest of the session, and an observable joins only a session
whose expiry is at most `TIBRIDGE_PUBLISHER_SESSION_EXPIRY_SLACK_PERCENT` of its own remaining lifetime later
than its ValidUntil (never earlier); tags are those every observable of the session shares.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Generic, TypeVar

from tibridge.common.contracts import IndicatorScored, Verdict
from tibridge.publisher.mapping import SEVERITY_RANK, IntelObject, intel_object
from tibridge.publisher.ownership import ACTIVE, FALSE_POSITIVE, OwnedObject, OwnershipIndex
from tibridge.publisher.payloads import (
    SessionProfile,
    ThreatStreamRequest,
    deactivate_request,
    import_request,
    update_request,
    upsert_request,
)
from tibridge.publisher.settings import PublishingSettings, PublishMode

K = TypeVar("K", bound=Hashable)
# Expiries within this of each other are the same (ThreatStream keeps seconds; we state seconds).
EXPIRY_TOLERANCE = timedelta(minutes=1)
MAX_DESCRIPTION = 500


class Skip(StrEnum):
    """Why an observable needs no request: its messages are completed as they are."""

    UNCHANGED = "unchanged"
    FALSE_POSITIVE = "analyst_false_positive"
    NOTHING_OURS = "nothing_of_ours_to_expire"
    DROP = "drop_verdict"


class Step(StrEnum):
    """What a request does, for the counts."""

    PUBLISH = "publish"  # an upsert or an import session of new or changed observables
    UPDATE = "update"  # one object of ours changed by id
    DEACTIVATE = "deactivate"  # one object of ours made inactive by id


@dataclass(frozen=True)
class Written(Generic[K]):
    """An observable a publishing request states, to confirm it landed."""

    key: K
    value: str
    itype: str


@dataclass(frozen=True)
class Action(Generic[K]):
    step: Step
    request: ThreatStreamRequest
    keys: tuple[K, ...]
    written: tuple[Written[K], ...] = ()
    target: OwnedObject | None = None  # the object a change by id is about


@dataclass(frozen=True)
class Plan(Generic[K]):
    actions: tuple[Action[K], ...] = ()
    skipped: Mapping[K, Skip] = field(default_factory=dict)
    refused: Mapping[K, str] = field(default_factory=dict)  # could not be planned: why


@dataclass(frozen=True)
class Item(Generic[K]):
    key: K
    scored: IndicatorScored


class Planner:
    def __init__(self, publishing: PublishingSettings) -> None:
        self._publishing = publishing
        self._slack = publishing.session_expiry_slack_percent / 100

    def plan(self, items: Sequence[Item[K]], index: OwnershipIndex, now: datetime) -> Plan[K]:
        actions: list[Action[K]] = []
        skipped: dict[K, Skip] = {}
        refused: dict[K, str] = {}
        new: list[tuple[K, IntelObject]] = []
        for item in items:
            try:
                decision = self._decide(item, index, now)
            except Exception as error:  # one message must never stop the others
                refused[item.key] = _describe(error)
                continue
            if isinstance(decision, Skip):
                skipped[item.key] = decision
            elif isinstance(decision, IntelObject):
                new.append((item.key, decision))
            else:
                actions += decision
        try:
            actions += self._publishing_requests(new, now)
        except Exception as error:
            refused |= {key: _describe(error) for key, _ in new}
        return Plan(tuple(actions), skipped, refused)

    # -- per observable ------------------------------------------------------------------------------------

    def _decide(self, item: Item[K], index: OwnershipIndex, now: datetime) -> Skip | IntelObject | list[Action[K]]:
        """A skip, an object for the batch's upsert or import sessions, or changes by id."""
        scored = item.scored
        held = index.held(scored.observable.value)
        active = [obj for obj in held if obj.status == ACTIVE]
        if scored.verdict is Verdict.EXPIRE:
            if not active:
                return Skip.NOTHING_OURS
            return [Action(Step.DEACTIVATE, deactivate_request(obj.id), (item.key,), target=obj) for obj in active]
        if scored.verdict is not Verdict.PUBLISH:
            return Skip.DROP
        if any(obj.status == FALSE_POSITIVE for obj in held):
            return Skip.FALSE_POSITIVE
        wanted = intel_object(scored, self._publishing, now)
        if not active:
            return wanted
        kept = next((obj for obj in active if obj.itype == wanted.itype), active[0])
        retired = [
            Action(Step.DEACTIVATE, deactivate_request(obj.id), (item.key,), target=obj)
            for obj in active
            if obj is not kept
        ]
        if self._unchanged(kept, wanted, now):
            return retired or Skip.UNCHANGED
        if self._publishing.mode is PublishMode.DIRECT and kept.itype == wanted.itype and not retired:
            return wanted
        update = Action(
            Step.UPDATE,
            update_request(kept.id, wanted),
            (item.key,),
            (Written(item.key, wanted.observable.value, wanted.itype),),
            target=kept,
        )
        return [update, *retired]

    def _unchanged(self, held: OwnedObject, wanted: IntelObject, now: datetime) -> bool:
        if held.itype != wanted.itype or held.expiration is None:
            return False
        if self._publishing.mode is PublishMode.APPROVAL:
            # What an import session states is approximate by design; only the expiry must still hold.
            return self._covers(held.expiration, wanted.expiration, now)
        return (
            abs(held.expiration - wanted.expiration) <= EXPIRY_TOLERANCE
            and held.confidence == wanted.confidence
            and held.severity == str(wanted.severity)
            and held.tlp == wanted.tlp
            and held.tags >= set(wanted.tags)
        )

    def _covers(self, stated: datetime, expiration: datetime, now: datetime) -> bool:
        """Whether a stated expiry is one an import session may give an observable expiring at `expiration`."""
        return (
            expiration - EXPIRY_TOLERANCE
            <= stated
            <= expiration + self._slack * (expiration - now) + (EXPIRY_TOLERANCE)
        )

    # -- new observables -----------------------------------------------------------------------------------

    def _publishing_requests(self, new: Sequence[tuple[K, IntelObject]], now: datetime) -> list[Action[K]]:
        if not new:
            return []
        size = self._publishing.batch_size
        if self._publishing.mode is PublishMode.DIRECT:
            return [
                Action(
                    Step.PUBLISH,
                    upsert_request([obj for _, obj in chunk], self._publishing),
                    tuple(key for key, _ in chunk),
                    tuple(Written(key, obj.observable.value, obj.itype) for key, obj in chunk),
                )
                for chunk in _chunks(new, size)
            ]
        actions = []
        for session in self._sessions(new, now):
            for chunk in _chunks(session.members, size):
                values = [obj.observable.value for _, obj in chunk]
                actions.append(
                    Action(
                        Step.PUBLISH,
                        import_request(values, session.profile(), self._publishing),
                        tuple(key for key, _ in chunk),
                        tuple(Written(key, obj.observable.value, obj.itype) for key, obj in chunk),
                    )
                )
        return actions

    def _sessions(self, new: Sequence[tuple[K, IntelObject]], now: datetime) -> list[_Session[K]]:
        """The fewest import sessions the profiles allow (see the module's docstring)."""
        by_marking: dict[tuple[object, ...], list[tuple[K, IntelObject]]] = {}
        for key, obj in new:
            by_marking.setdefault((obj.tlp, obj.threat_type, obj.confidence is None), []).append((key, obj))
        sessions: list[_Session[K]] = []
        for members in by_marking.values():
            # Latest expiry first: each expiry group takes every observable that may share its latest expiry.
            members.sort(key=lambda member: member[1].expiration, reverse=True)
            group: list[_Session[K]] = []
            latest: datetime | None = None
            for key, obj in members:
                if latest is None or not self._covers(latest, obj.expiration, now):
                    sessions += group
                    group, latest = [], obj.expiration
                target = next((session for session in group if session.admits(obj)), None)
                if target is None:
                    target = _Session(latest)
                    group.append(target)
                target.add(key, obj)
            sessions += group
        return sessions


@dataclass
class _Session(Generic[K]):
    expiration: datetime
    members: list[tuple[K, IntelObject]] = field(default_factory=list)
    mappings: dict[str, str] = field(default_factory=dict)

    def admits(self, obj: IntelObject) -> bool:
        wanted = obj.kind.mapping_value(obj.itype)
        return self.mappings.get(obj.kind.mapping_field, wanted) == wanted

    def add(self, key: K, obj: IntelObject) -> None:
        self.mappings[obj.kind.mapping_field] = obj.kind.mapping_value(obj.itype)
        self.members.append((key, obj))

    def profile(self) -> SessionProfile:
        objects = [obj for _, obj in self.members]
        first = objects[0]
        shared = set.intersection(*(set(obj.tags) for obj in objects))
        confidences = [obj.confidence for obj in objects if obj.confidence is not None]
        return SessionProfile(
            threat_type=first.threat_type,
            severity=min((obj.severity for obj in objects), key=SEVERITY_RANK.__getitem__),
            confidence=min(confidences, default=None),
            tlp=first.tlp,
            expiration=self.expiration,
            tags=tuple(tag for tag in first.tags if tag in shared),
            mappings=dict(self.mappings),
        )


def _chunks(items: Sequence[tuple[K, IntelObject]], size: int) -> Iterable[Sequence[tuple[K, IntelObject]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _describe(error: Exception) -> str:
    return f"the publisher could not map it to ThreatStream ({type(error).__name__}: {error})"[:MAX_DESCRIPTION]
