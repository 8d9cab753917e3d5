"""The one seam between the publisher and ThreatStream: `Gateway.send(request) -> Answer`, by httpx through the
process's rate-and-retry engine (`tibridge.common.pacing.Engine`: every request — upsert, import, session poll,
search, change by id — takes its place from one adaptive `Pacer` and has one budget of attempts; httpx itself
retries nothing), or into a file (dry run).

The `Authorization: apikey user:key` header is built from the secret at request time; the key is never in a
URL, a log line, an exception or a repr, and is masked out of anything ThreatStream says back.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from pydantic import SecretStr

from tibridge.common.http import RETRYABLE_STATUS, cut_short, judge_response
from tibridge.common.metrics import Snapshot, Tally
from tibridge.common.pacing import Engine, PaceState, RetriesExhausted, Retry
from tibridge.publisher.payloads import Operation, Permission, ThreatStreamRequest

_tracer = trace.get_tracer("tibridge.publisher")

MAX_MESSAGE_LENGTH = 500
_MASK = "[REDACTED]"


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    # ThreatStream refuses the content: bisect the request to find the offending items.
    REJECTED = "rejected"
    # ThreatStream refuses us (credentials, wrong URL, reading denied): nothing will pass until it is fixed.
    REFUSED = "refused"
    # The user lacks the permission this kind of request needs (`Answer.permission`); others may still pass.
    FORBIDDEN = "forbidden"
    # Still failing (429/5xx/timeouts) after the retry budget: give the messages back to the bus.
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    detail: str
    status: int | None = None
    body: Any = None  # the JSON of a 2xx answer
    permission: Permission | None = None  # what a FORBIDDEN answer lacks


@dataclass(frozen=True)
class GatewayCounts(Snapshot):
    requests: int  # HTTP requests, retries included
    retries: int
    throttled: int = 0  # 429s honoured
    pace: PaceState | None = None  # where the pacer stands (none for the dry run)


class Gateway(Protocol):
    async def send(self, request: ThreatStreamRequest) -> Answer: ...

    def counts(self) -> GatewayCounts: ...


class ThreatStreamClient:
    def __init__(self, http: httpx.AsyncClient, username: str, api_key: SecretStr, engine: Engine) -> None:
        self._http = http
        self._username = username
        self._api_key = api_key
        self._engine = engine

    def counts(self) -> GatewayCounts:
        engine = self._engine.counts()
        return GatewayCounts(engine.requests, engine.retries, engine.throttled, engine.pace)

    async def send(self, request: ThreatStreamRequest) -> Answer:
        async def attempt() -> httpx.Response:
            return await self._http.request(
                request.method,
                request.path,
                headers={"Authorization": f"apikey {self._username}:{self._api_key.get_secret_value()}"},
                # Every form field as a nameless part: ThreatStream's import takes multipart/form-data.
                files={name: (None, value) for name, value in request.form.items()} or None,
                json=request.json_body,
                params=request.params or None,
            )

        with _tracer.start_as_current_span(
            f"ThreatStream {request.method} {request.path}",
            kind=SpanKind.CLIENT,
            attributes={"tibridge.threatstream.objects": request.objects},
        ):
            try:
                response = await self._engine.call(attempt, _judge_for(request.operation))
            except RetriesExhausted as error:
                if not (error.budget_spent and isinstance(error.last, httpx.Response)):
                    return Answer(Outcome.UNAVAILABLE, str(error))
                response = error.last  # still 429/5xx on the last attempt: read what it says
            except httpx.HTTPError as error:
                return Answer(Outcome.UNAVAILABLE, f"ThreatStream could not be reached ({type(error).__name__})")
        return self._interpret(request, response)

    def _interpret(self, request: ThreatStreamRequest, response: httpx.Response) -> Answer:
        status = response.status_code
        said = self._message(response)
        if response.is_success:
            body = _json(response)
            if body is None and response.content:
                # Not JSON, or an import cut short: what ThreatStream did is unknown, so the messages are given
                # back and sent again, which updates rather than duplicates.
                return Answer(Outcome.UNAVAILABLE, f"ThreatStream's {status} answer is not JSON: {said}", status)
            if request.operation is Operation.IMPORT and not (isinstance(body, dict) and body.get("success") is True):
                return Answer(Outcome.REJECTED, f"ThreatStream did not take the import: {said}", status)
            return Answer(Outcome.ACCEPTED, said, status, body)
        if status in RETRYABLE_STATUS:
            return Answer(Outcome.UNAVAILABLE, f"ThreatStream kept answering {status}: {said}", status)
        if status == 401:
            reason = (
                "ThreatStream refused the API key (401): check TIBRIDGE_THREATSTREAM_USERNAME and "
                "TIBRIDGE_THREATSTREAM_API_KEY."
            )
            return Answer(Outcome.REFUSED, reason, status)
        if request.operation is Operation.UPDATE and (status == 404 or (status == 403 and not _about_rights(said))):
            # This object is gone or not ours to edit (another organisation's): nothing to do with it.
            return Answer(Outcome.REJECTED, f"ThreatStream answered {status}: {said}", status)
        if status == 403:
            permission = request.permission
            if permission is None:
                return Answer(Outcome.REFUSED, f"ThreatStream denied reading intelligence (403): {said}", status)
            return Answer(Outcome.FORBIDDEN, _lacking(permission, said), status, permission=permission)
        if status in (404, 405) or response.is_redirect:
            reason = (
                f"ThreatStream has no {request.method} {request.path} ({status}): check "
                "TIBRIDGE_THREATSTREAM_BASE_URL (the API root, ending in /api)."
            )
            return Answer(Outcome.REFUSED, reason, status)
        return Answer(Outcome.REJECTED, f"ThreatStream answered {status}: {said}", status)

    def _message(self, response: httpx.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            text = response.text
        else:
            message = (body.get("message") or body.get("error")) if isinstance(body, dict) else None
            text = message if isinstance(message, str) else json.dumps(body)
        masked = text.replace(self._api_key.get_secret_value(), _MASK) if self._api_key.get_secret_value() else text
        return " ".join(masked.split())[:MAX_MESSAGE_LENGTH]


def _judge_for(operation: Operation) -> Callable[[httpx.Response], Retry | None]:
    """429 and 5xx are retried; so is a 2xx cut short on the way, except for an import: sent again, an import is
    another session, so its messages go back to the bus and are planned afresh."""
    return judge_response if operation is Operation.IMPORT else _judge_repeatable


def _judge_repeatable(response: httpx.Response) -> Retry | None:
    return cut_short(response.status_code, response.content) or judge_response(response)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _about_rights(message: str) -> bool:
    return "permission" in message.lower()


def _lacking(permission: Permission, said: str) -> str:
    needed_for = {
        Permission.IMPORT: "importing intelligence (TIBRIDGE_PUBLISHER_MODE=approval)",
        Permission.APPROVE_IMPORT: "auto-approved import sessions (TIBRIDGE_PUBLISHER_AUTO_APPROVE=true)",
        Permission.APPROVE_INTEL: "upserting (TIBRIDGE_PUBLISHER_MODE=direct) and changing or deactivating "
        "observables by id",
    }[permission]
    return f"the ThreatStream user lacks the '{permission}' permission, which {needed_for} needs (403: {said})"


class DryRun:
    """Writes each request that would change ThreatStream to a JSONL file instead of sending it, and answers that
    it was accepted; reads find nothing (the dry run holds nothing), so nothing is ever expired or followed."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._written = Tally("tibridge.publisher.dry_run.requests", "ThreatStream requests written to the dry run")

    def counts(self) -> GatewayCounts:
        return GatewayCounts(requests=self._written.total(), retries=0)

    async def send(self, request: ThreatStreamRequest) -> Answer:
        if request.method == "GET":
            return Answer(Outcome.ACCEPTED, "the dry run holds nothing", 200, {"meta": {"next": None}, "objects": []})
        line = json.dumps(request.record(), ensure_ascii=False, sort_keys=True) + "\n"
        await asyncio.to_thread(self._append, line)
        self._written.add()
        return Answer(Outcome.ACCEPTED, f"written to {self._path}", 200, {"success": True})

    def _append(self, line: str) -> None:
        with self._path.open("a", encoding="utf-8") as out:
            out.write(line)
