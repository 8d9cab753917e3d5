"""Microsoft Threat Intelligence (formerly MDTI) host reputation over Microsoft Graph: one request per call,
a JSON `$batch` of up to 20 hosts or, in `single` lookup mode, one GET per host.

`GraphReputationClient.lookup` sends that one request and says, per host, what happened: found (or the API has
no reputation), retry later (with what the answer says about Graph's capacity), refused (a configuration
problem, in Graph's own words) or unanswerable (this host can never be looked up). Pacing and retrying belong
to the batcher on top, which spends one attempt of each lookup per request that carries it.
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
from tibridge.common.contracts import Classification, Reputation, RuleSeverity
from tibridge.common.http import HTTP_TRANSIENT, retry_of_status
from tibridge.common.metrics import Distribution, Snapshot, Tally
from tibridge.common.pacing import Retry, Signal
from tibridge.scorer.settings import LookupMode

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
MAX_BATCH_ITEMS = 20
PRODUCT = "Microsoft Threat Intelligence (formerly MDTI)"
# The cause of an item (or single GET) answered 500: when every host gets one, Graph refuses the tenant.
SERVER_ERROR = "500"
_MAX_MESSAGE = 300

UNKNOWN_FUTURE_VALUE = "unknownFutureValue"
_CLASSIFICATIONS = frozenset(Classification)
_SEVERITIES = frozenset(RuleSeverity)


@dataclass(frozen=True)
class Found:
    """Graph answered; `reputation` is None when it has no reputation for the host."""

    reputation: Reputation | None


@dataclass(frozen=True)
class Refused:
    """Graph refuses every lookup (token, permission, role, tenant, endpoint): pause, keep the messages."""

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
    items: int  # lookups the requests carried
    throttled: int  # 429 answers, to a whole request or to one item
    retries: int  # lookups sent again
    # A reputation source that paces nothing (a fake) leaves these at zero.
    requests: int = 0  # HTTP requests: $batch requests, single GETs and probes
    rate: float = 0.0  # lookups per second the pacer allows now
    peak_rate: float = 0.0
    parallel_limit: int = 0  # requests it lets be in flight now
    peak_in_flight: int = 0


class GraphMetrics:
    """What the Graph client counts: requests by kind, the lookups they carry, 429 answers."""

    def __init__(self) -> None:
        self.requests = Tally("tibridge.scorer.graph.requests", "Graph HTTP requests, by kind ($batch or single)")
        self.sizes = Distribution("tibridge.scorer.graph.batch_size", "Lookups per Graph request")
        self.throttled = Tally("tibridge.scorer.graph.throttled", "429 answers honoured")


def reputation_path(host: str) -> str:
    return f"/security/threatIntelligence/hosts/{quote(host, safe='')}/reputation"


def parse_reputation(body: Any) -> Reputation | None:
    """A `hostReputation` resource as our contract; None for the API's "unknown, score 0, no rules".

    An enum value this reader does not know (Graph's `unknownFutureValue`, or a member added since) is read as
    `unknownFutureValue`: it never makes a lookup fail. Raises ValueError when the body is not a reputation.
    """
    if not isinstance(body, Mapping):
        raise ValueError("the reputation is not a JSON object")
    try:
        reputation = Reputation.model_validate(
            {
                "score": body.get("score"),
                "classification": _evolvable(body.get("classification"), _CLASSIFICATIONS),
                "rules": [
                    {
                        "name": rule.get("name") or "",
                        "description": rule.get("description") or "",
                        "severity": _evolvable(rule.get("severity") or RuleSeverity.UNKNOWN, _SEVERITIES),
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


def _evolvable(value: Any, known: frozenset[str]) -> Any:
    """Graph's evolvable enums: a string this reader does not know is `unknownFutureValue`; anything else is
    left for validation to judge."""
    if isinstance(value, str) and value not in known:
        return UNKNOWN_FUTURE_VALUE
    return value


def refusal_reason(status: int, message: str) -> str:
    """What to fix when Graph answers 401 or 403, with Graph's own words."""
    said = f': "{message}"' if message else ""
    if status == 401:
        return (
            f"Microsoft Graph did not accept the scorer's token (HTTP 401{said}): check TIBRIDGE_CREDENTIAL and the "
            "identity's tenant, client id and secret or federation"
        )
    lowered = message.lower()
    if "verif" in lowered:
        fix = "the tenant is blocked until Microsoft has verified it; the verification state is in Graph's message"
    elif "security reader" in lowered:
        fix = "give the scorer's identity the Security Reader role (or higher) in Microsoft Entra ID"
    else:
        fix = (
            "grant the app registration the Microsoft Graph application permission ThreatIntelligence.Read.All "
            "with admin consent (delegated access also needs the Security Reader role; a tenant Microsoft has not "
            "verified is blocked until it is)"
        )
    return f"{PRODUCT} refused the lookups (HTTP {status}{said}): {fix}"


def server_error_refusal(hosts: int, message: str) -> str:
    """What to fix when every host is answered 500 (how a tenant without the API's licence was answered)."""
    said = f' ("{message}")' if message else ""
    return (
        f"{PRODUCT} answered HTTP 500 for {hosts} different hosts in a row{said}, as it answers a tenant that may "
        "not use the API: check that the tenant has Microsoft Defender XDR or Microsoft Sentinel and that the app "
        "registration has ThreatIntelligence.Read.All with admin consent"
    )


def item_answer(status: int, headers: Mapping[str, str], body: Any) -> ItemAnswer:
    """What one answer for one host means (a batch item, or a single GET)."""
    if status == 200:
        try:
            return Found(parse_reputation(body))
        except ValueError as error:
            return Retry("malformed", detail=str(error)[:_MAX_MESSAGE])
    if status == 404:
        return Found(None)
    message = _error_message(body)
    retry = retry_of_status(status, _header(headers, "Retry-After"), detail=message)
    if retry is not None:
        return retry
    if status in (401, 403):
        return Refused(refusal_reason(status, message))
    return Unanswerable(status, message)


def batch_answers(response: httpx.Response, count: int) -> list[ItemAnswer]:
    """Per item, in request order (items are numbered "1".."count"), what a `$batch` answer means."""
    status = response.status_code
    if status != 200:
        message = _error_message(_json(response))
        retry = retry_of_status(status, response.headers.get("Retry-After"), cause=f"batch {status}", detail=message)
        if retry is not None:
            return [retry] * count
        if status in (401, 403):
            return [Refused(refusal_reason(status, message))] * count
        reason = (
            f'Graph answered HTTP {status} to a $batch request ("{message}"): check TIBRIDGE_GRAPH_BASE_URL '
            "(…/v1.0 of Microsoft Graph)"
        )
        return [Refused(reason)] * count
    try:
        items = {str(item["id"]): item for item in response.json()["responses"]}
    except (ValueError, KeyError, TypeError):
        return [Retry("malformed batch")] * count
    answers: list[ItemAnswer] = []
    for number in range(1, count + 1):
        item = items.get(str(number))
        if not isinstance(item, Mapping) or not isinstance(item.get("status"), int):
            answers.append(Retry("batch item missing"))
            continue
        headers = item.get("headers")
        answers.append(item_answer(item["status"], headers if isinstance(headers, Mapping) else {}, item.get("body")))
    return answers


def single_answer(response: httpx.Response) -> ItemAnswer:
    """What a single GET's answer means. A 404 that is not Graph's error object is not a host Graph never saw:
    it is a wrong endpoint."""
    body = _json(response)
    if response.status_code == 404 and not (isinstance(body, Mapping) and isinstance(body.get("error"), Mapping)):
        return Refused(
            "Graph's reputation path answered HTTP 404 without Graph's error body: check TIBRIDGE_GRAPH_BASE_URL "
            "(…/v1.0 of Microsoft Graph)"
        )
    if response.status_code == 200 and body is None:
        return Retry("malformed", detail="the answer is not JSON")
    return item_answer(response.status_code, response.headers, body)


class GraphReputationClient:
    """Sends one Graph request per `lookup`: a `$batch` of up to 20 hosts, or one GET (`LookupMode.SINGLE`)."""

    def __init__(self, http: httpx.AsyncClient, mode: LookupMode = LookupMode.BATCH) -> None:
        self._http = http
        self.mode = mode
        self.max_hosts = MAX_BATCH_ITEMS if mode is LookupMode.BATCH else 1
        self.metrics = GraphMetrics()

    async def lookup(self, hosts: Sequence[str]) -> list[ItemAnswer]:
        if not 1 <= len(hosts) <= self.max_hosts:
            raise ValueError(f"a Graph {self.mode} lookup takes 1 to {self.max_hosts} hosts, not {len(hosts)}")
        self.metrics.requests.add(kind=str(self.mode))
        self.metrics.sizes.record(len(hosts))
        try:
            if self.mode is LookupMode.BATCH:
                response = await self._http.post("/$batch", json=_batch_body(hosts))
                answers = batch_answers(response, len(hosts))
            else:
                response = await self._http.get(reputation_path(hosts[0]))
                answers = [single_answer(response)]
        except HTTP_TRANSIENT as error:
            return [Retry(type(error).__name__, signal=Signal.OVERLOADED, detail=str(error)[:_MAX_MESSAGE])] * len(
                hosts
            )
        if response.status_code == 429 or self.mode is LookupMode.SINGLE:
            throttled = int(response.status_code == 429)
        else:
            throttled = sum(isinstance(answer, Retry) and answer.signal is Signal.THROTTLED for answer in answers)
        self.metrics.throttled.add(throttled)
        return answers


def _batch_body(hosts: Sequence[str]) -> dict[str, Any]:
    return {
        "requests": [
            {"id": str(number), "method": "GET", "url": reputation_path(host)}
            for number, host in enumerate(hosts, start=1)
        ]
    }


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


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((str(value) for key, value in headers.items() if key.lower() == wanted), None)


def _error_message(body: Any) -> str:
    """Graph's own `error.message` (what readiness and logs show), or the body when it has none."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping) and error.get("message"):
        return str(error["message"])[:_MAX_MESSAGE]
    return json.dumps(body)[:_MAX_MESSAGE] if body is not None else ""
