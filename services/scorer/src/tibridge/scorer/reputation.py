"""MDTI host reputation over Microsoft Graph JSON batching: one `$batch` request for up to 20 hosts.

`GraphReputationClient.lookup_batch` sends one batch (the whole request retried by `ResilientSender`) and
says, per host, what happened: found (or MDTI has nothing), retry later, refused (a configuration problem)
or unanswerable (this host can never be looked up). Deciding when to retry belongs to the batcher.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential
from pydantic import ValidationError

from tibridge.common.clock import Clock
from tibridge.common.contracts import Classification, Reputation
from tibridge.common.http import RETRYABLE_STATUS, ResilientSender, RetriesExhausted, parse_retry_after
from tibridge.common.metrics import Distribution, Snapshot, Tally

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
MAX_BATCH_ITEMS = 20
GRAPH_REFUSED_REASON = (
    "Graph refused the token (HTTP {status}): grant the app ThreatIntelligence.Read.All "
    "and check the tenant's MDTI entitlement"
)
_MAX_MESSAGE = 300


@dataclass(frozen=True)
class Found:
    """MDTI answered; `reputation` is None when it has no reputation for the host."""

    reputation: Reputation | None


@dataclass(frozen=True)
class Retry:
    """Try this host again later: after `retry_after` seconds when Graph said so, else after a backoff."""

    cause: str
    retry_after: float | None = None
    throttled: bool = False


@dataclass(frozen=True)
class Refused:
    """Graph refuses every lookup (token, permission, endpoint): pause, keep the messages."""

    reason: str


@dataclass(frozen=True)
class Unanswerable:
    """Graph will never answer this host (e.g. 400): dead-letter its message."""

    status: int
    message: str


ItemAnswer = Found | Retry | Refused | Unanswerable


@dataclass(frozen=True)
class GraphCounts(Snapshot):
    batch_requests: int
    items: int
    throttled: int
    retries: int


class GraphMetrics:
    """What the Graph client and the batcher on it count: requests, their sizes, 429s honoured, retries."""

    def __init__(self) -> None:
        self.requests = Tally("tibridge.scorer.graph.requests", "Graph $batch HTTP requests")
        self.sizes = Distribution("tibridge.scorer.graph.batch_size", "Items per $batch")
        self.throttled = Tally("tibridge.scorer.graph.throttled", "429 answers honoured")
        self.retries = Tally("tibridge.scorer.graph.retries", "Lookups retried, by cause")

    def counts(self) -> GraphCounts:
        return GraphCounts(
            batch_requests=self.requests.total(),
            items=round(self.sizes.sum),
            throttled=self.throttled.total(),
            retries=self.retries.total(),
        )


def reputation_path(host: str) -> str:
    return f"/security/threatIntelligence/hosts/{quote(host, safe='')}/reputation"


def parse_reputation(body: Any) -> Reputation | None:
    """A `hostReputation` resource as our contract; None for MDTI's "unknown, score 0, no rules".

    Raises ValueError when the body is not a reputation.
    """
    if not isinstance(body, Mapping):
        raise ValueError("the reputation is not a JSON object")
    try:
        reputation = Reputation.model_validate(
            {
                "score": body.get("score"),
                "classification": body.get("classification"),
                "rules": [
                    {
                        "name": rule.get("name") or "",
                        "description": rule.get("description") or "",
                        "severity": rule.get("severity") or "unknown",
                        "related_details_url": rule.get("relatedDetailsUrl"),
                    }
                    for rule in body.get("rules") or ()
                ],
            }
        )
    except (AttributeError, ValidationError) as error:
        raise ValueError(f"the reputation does not match hostReputation: {error}") from None
    unknown = reputation.classification is Classification.UNKNOWN
    return None if unknown and reputation.score == 0 and not reputation.rules else reputation


def item_answer(status: int, headers: Mapping[str, str], body: Any) -> ItemAnswer:
    """What one batch item's answer means."""
    if status == 200:
        try:
            return Found(parse_reputation(body))
        except ValueError as error:
            return Retry(f"malformed reputation: {error}"[:_MAX_MESSAGE])
    if status == 404:
        return Found(None)
    if status in RETRYABLE_STATUS:
        retry_after = parse_retry_after(_header(headers, "Retry-After"))
        return Retry(str(status), retry_after, throttled=status == 429)
    if status in (401, 403):
        return Refused(GRAPH_REFUSED_REASON.format(status=status))
    return Unanswerable(status, _error_message(body))


def batch_answers(response: httpx.Response, count: int) -> list[ItemAnswer]:
    """Per item, in request order (items are numbered "1".."count"), what a `$batch` answer means."""
    if response.status_code in (401, 403):
        return [Refused(GRAPH_REFUSED_REASON.format(status=response.status_code))] * count
    if response.status_code in RETRYABLE_STATUS:
        # The sender's last attempt; it has already paused the limiter for a 429 and counted it.
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return [Retry(f"batch {response.status_code}", retry_after)] * count
    if response.status_code != 200:
        reason = (
            f"Graph answered HTTP {response.status_code} to a $batch request: check TIBRIDGE_GRAPH_BASE_URL "
            "(…/v1.0 of Microsoft Graph)"
        )
        return [Refused(reason)] * count
    try:
        items = {str(item["id"]): item for item in response.json()["responses"]}
    except (ValueError, KeyError, TypeError):
        return [Retry("malformed batch response")] * count
    answers: list[ItemAnswer] = []
    for number in range(1, count + 1):
        item = items.get(str(number))
        if not isinstance(item, Mapping) or not isinstance(item.get("status"), int):
            answers.append(Retry("batch item missing"))
            continue
        headers = item.get("headers")
        answers.append(item_answer(item["status"], headers if isinstance(headers, Mapping) else {}, item.get("body")))
    return answers


class GraphReputationClient:
    def __init__(self, http: httpx.AsyncClient, sender: ResilientSender) -> None:
        self._http = http
        self._sender = sender
        self.metrics = GraphMetrics()

    async def lookup_batch(self, hosts: Sequence[str]) -> list[ItemAnswer]:
        if not 1 <= len(hosts) <= MAX_BATCH_ITEMS:
            raise ValueError(f"a Graph $batch takes 1 to {MAX_BATCH_ITEMS} lookups, not {len(hosts)}")
        body = {
            "requests": [
                {"id": str(number), "method": "GET", "url": reputation_path(host)}
                for number, host in enumerate(hosts, start=1)
            ]
        }
        attempts = 0

        async def attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                self.metrics.retries.add(cause="batch")
            self.metrics.requests.add()
            self.metrics.sizes.record(len(hosts))
            response = await self._http.post("/$batch", json=body)
            if response.status_code == 429:
                self.metrics.throttled.add()
            return response

        try:
            response = await self._sender.send(attempt, cost=len(hosts))
        except RetriesExhausted as error:
            return [Retry(str(error))] * len(hosts)
        return batch_answers(response, len(hosts))


class BearerTokenAuth(httpx.Auth):
    """Adds the bearer token, reused until shortly before it expires; a 401 gets one try with a fresh one."""

    def __init__(
        self, credential: AsyncTokenCredential, clock: Clock, scope: str = GRAPH_SCOPE, margin_seconds: float = 300
    ) -> None:
        self._credential = credential
        self._clock = clock
        self._scope = scope
        self._margin = margin_seconds
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self._current(refresh=False)}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {await self._current(refresh=True)}"
            yield request

    async def _current(self, *, refresh: bool) -> str:
        async with self._lock:
            now = self._clock.now().timestamp()
            if refresh or self._token is None or self._token.expires_on - self._margin <= now:
                self._token = await self._credential.get_token(self._scope)
            return self._token.token


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((str(value) for key, value in headers.items() if key.lower() == wanted), None)


def _error_message(body: Any) -> str:
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping) and error.get("message"):
        return str(error["message"])[:_MAX_MESSAGE]
    return json.dumps(body)[:_MAX_MESSAGE] if body is not None else "no details"
