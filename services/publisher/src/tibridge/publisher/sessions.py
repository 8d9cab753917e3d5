"""Following an import session to its end. Pure: the delivery loop polls, this decides.

Imports are asynchronous (external-apis.md §3): a 202 proves nothing; the session is `processing`, then
`done` (waiting for an analyst), `approved`, `errors` or `deleted`, and only then do `numIndicators` (accepted)
and `numRejected` say how it went. ThreatStream lists no rejected observables, so they are found the way any
client could: values on the organisation's whitelist (`GET v1/orgwhitelist/`) are refused by every import,
and once a session is approved `GET v2/intelligence/?import_session_id=N` shows which observables landed.
Polling is paced (1 s, then half as long again each time, at most 30 s apart) and bounded
(`TIBRIDGE_PUBLISHER_SESSION_FOLLOW_SECONDS`): Anomali has revoked keys of integrations that polled without bound.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)

FIRST_POLL_SECONDS = 1.0
POLL_GROWTH = 1.5
LONGEST_POLL_SECONDS = 30.0
WHITELISTED = "the value is on the organisation's ThreatStream whitelist (GET /api/v1/orgwhitelist/)"


class SessionStatus(StrEnum):
    PROCESSING = "processing"
    DONE = "done"
    APPROVING = "approving"
    APPROVED = "approved"
    ERRORS = "errors"
    DELETED = "deleted"


FINAL = frozenset({SessionStatus.DONE, SessionStatus.APPROVED, SessionStatus.ERRORS, SessionStatus.DELETED})


def poll_delay(polls: int) -> float:
    """Seconds before poll number `polls + 1`."""
    return min(LONGEST_POLL_SECONDS, FIRST_POLL_SECONDS * POLL_GROWTH**polls)


@dataclass(frozen=True)
class SessionState:
    status: SessionStatus | str
    accepted: int
    rejected: int

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def counts(self) -> tuple[int, int]:
        """(accepted, rejected)"""
        return self.accepted, self.rejected


def session_id_of(body: Any) -> str | None:
    """The import session id of an import's answer, if it is one ThreatStream could have given."""
    if not isinstance(body, Mapping):
        return None
    session_id = body.get("import_session_id")
    text = str(session_id) if isinstance(session_id, int | str) else ""
    return text if text.isdigit() and len(text) <= 20 else None


def session_state(body: Any) -> SessionState | None:
    if not isinstance(body, Mapping) or not isinstance(body.get("status"), str):
        return None
    accepted, rejected = body.get("numIndicators"), body.get("numRejected")
    status: SessionStatus | str = body["status"]
    if status in SessionStatus.__members__.values():
        status = SessionStatus(status)
    return SessionState(
        status=status,
        accepted=accepted if isinstance(accepted, int) and accepted >= 0 else 0,
        rejected=rejected if isinstance(rejected, int) and rejected >= 0 else 0,
    )


@dataclass(frozen=True)
class Verdicts(Generic[K]):
    """Which observables of a session ThreatStream rejected (and why), and how many it rejected unnamed."""

    rejected: Mapping[K, str]
    unattributed: int


def attribute(
    session_id: str,
    state: SessionState,
    values: Mapping[K, str],
    whitelist: frozenset[str] | None,
    landed: frozenset[str] | None,
) -> Verdicts[K]:
    """The session's rejections, attributed to observables as far as ThreatStream lets a client know.

    `values` are the observables the session carried; `whitelist` the organisation's whitelist (None: not read);
    `landed` what `?import_session_id=` found (None: not read, or the session is not approved yet)."""
    if state.rejected == 0:
        return Verdicts({}, 0)
    if state.accepted == 0 and state.rejected >= len(values):
        reason = f"ThreatStream rejected every observable of import session {session_id} (status {state.status})"
        return Verdicts({key: _why(value, whitelist, reason) for key, value in values.items()}, 0)
    rejected = {key: WHITELISTED for key, value in values.items() if whitelist is not None and value in whitelist}
    if landed is not None:
        missing = f"ThreatStream rejected it in import session {session_id} (it did not land; no reason is given)"
        rejected |= {key: missing for key, value in values.items() if value not in landed and key not in rejected}
    return Verdicts(rejected, max(0, state.rejected - len(rejected)))


def _why(value: str, whitelist: frozenset[str] | None, otherwise: str) -> str:
    return WHITELISTED if whitelist is not None and value in whitelist else otherwise
