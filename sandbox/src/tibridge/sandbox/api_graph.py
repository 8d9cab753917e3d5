"""Microsoft Graph: Microsoft Threat Intelligence (formerly MDTI) host reputation, single GETs and JSON batching.

`graph_refusal` makes every lookup answer as a tenant that may not use the API does (external-apis.md §2):
403s with Graph's error bodies, or the pre-2026 missing-licence shape, a 500 `generalException` for every
host. Each item of a `$batch` carries the same answer; the batch itself stays 200.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from tibridge.sandbox.faults import FaultKind
from tibridge.sandbox.httpkit import STATE_KEY, ApiErrors, bearer_middleware, fault_middleware, json_response
from tibridge.sandbox.reputation import graph_body
from tibridge.sandbox.state import SandboxState

PREFIX = "/graph"
MAX_BATCH = 20
_REPUTATION = re.compile(
    r"^/?security/threatIntelligence/hosts(?:/(?P<plain>[^/()]+)|\('(?P<quoted>(?:[^']|'')+)'\))/reputation/?$"
)


def _error_body(code: str, message: str) -> dict[str, Any]:
    inner = {"date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "request-id": str(uuid.uuid4())}
    return {
        "error": {"code": code, "message": message, "innerError": {**inner, "client-request-id": inner["request-id"]}}
    }


ERRORS = ApiErrors(
    body=_error_body,
    codes={
        400: ("BadRequest", "The request is not valid."),
        401: ("InvalidAuthenticationToken", "Access token is empty or invalid."),
        403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
        404: ("NotFound", "The requested resource does not exist."),
        405: ("MethodNotAllowed", "Only GET is supported on this resource."),
        429: ("TooManyRequests", "Too many requests; retry after the number of seconds in Retry-After."),
        500: ("generalException", "Error retrieving reputation"),
        503: ("serviceNotAvailable", "The service is temporarily unavailable."),
        504: ("gatewayTimeout", "The request timed out."),
    },
)


@dataclass(frozen=True)
class GraphAnswer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)  # besides Content-Type


def _error(status: int, message: str | None = None, retry_after: int | None = None) -> GraphAnswer:
    code, default = ERRORS.codes[status]
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return GraphAnswer(status, _error_body(code, message or default), headers)


# Status, code and message per refusal. The 403 message for missing permissions is Graph's security-API text;
# tenant verification and Security Reader have no documented status or wording (assumed 403, text ours).
REFUSALS: dict[str, tuple[int, str, str]] = {
    "forbidden": (
        403,
        "Forbidden",
        "The authentication token does not contain valid permissions or the user does not have valid roles.",
    ),
    "security_reader": (
        403,
        "Forbidden",
        "The user does not have the Security Reader role (or higher) that Microsoft Threat Intelligence requires.",
    ),
    "tenant_unverified": (
        403,
        "Forbidden",
        "This tenant is blocked from Microsoft Threat Intelligence until it is verified. Verification state: "
        "PendingVerification.",
    ),
    "licence_500": (500, "generalException", "Error retrieving reputation"),
}


def resolve(state: SandboxState, method: str, url: str) -> GraphAnswer:
    """One Graph request (a whole GET, or one item of a batch) against the reputation model."""
    if method.upper() != "GET":
        return _error(405)
    path = unquote(url.split("?", 1)[0]).removeprefix("/v1.0")
    match = _REPUTATION.match(path)
    if match is None:
        return _error(400, f"Resource not found for the segment '{path.strip('/').split('/')[0]}'.")
    host = match.group("plain") or match.group("quoted").replace("''", "'")
    refusal = state.config.graph_refusal
    if refusal is not None:
        status, code, message = REFUSALS[refusal]
        return GraphAnswer(status, _error_body(code, message))
    state.stats.graph.lookups += 1
    reputation = state.reputations.lookup(host)
    if reputation is not None:
        return GraphAnswer(200, graph_body(host, reputation))
    if state.config.never_seen == "404":
        return _error(404, f"No reputation information for host '{host}'.")
    return GraphAnswer(
        200,
        {
            "@odata.type": "#microsoft.graph.security.hostReputation",
            "id": host,
            "classification": "unknown",
            "score": 0,
            "rules": [],
        },
    )


async def _single(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    state.stats.graph.http_requests += 1
    answer = resolve(state, request.method, request.match_info["path"])
    return json_response(answer.body, answer.status, answer.headers)


def _invalid_batch(message: str) -> web.Response:
    return json_response(_error_body("BadRequest", message), 400)


async def _batch(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    stats = state.stats.graph
    stats.http_requests += 1
    stats.batch_requests += 1
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _invalid_batch("The batch body is not valid JSON.")
    requests = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(requests, list) or not all(
        isinstance(item, dict) and all(isinstance(item.get(key), str) for key in ("id", "method", "url"))
        for item in requests
    ):
        return _invalid_batch("The batch needs a 'requests' list whose items have string 'id', 'method' and 'url'.")
    if not requests or len(requests) > MAX_BATCH:
        return _invalid_batch(f"A batch holds 1 to {MAX_BATCH} requests; this one has {len(requests)}.")
    ids = [item["id"] for item in requests]
    if len(set(ids)) != len(ids):
        duplicate = next(item_id for item_id in ids if ids.count(item_id) > 1)
        return _invalid_batch(
            f"Request id '{duplicate}' is not unique within the batch; give every request its own id."
        )
    stats.batch_sizes[len(requests)] += 1
    responses = []
    for item in requests:
        decision = state.faults.decide_item("graph")
        if decision.kind in (FaultKind.RATE_LIMITED, FaultKind.THROTTLED):
            stats.items_429 += 1
            assert decision.retry_after is not None
            state.announce_retry_after("graph", decision.retry_after)
            answer = _error(429, retry_after=decision.retry_after)
        elif decision.kind is FaultKind.ERROR_500:
            answer = _error(500)
        elif decision.kind is FaultKind.ERROR_503:
            answer = _error(503)
        else:
            answer = resolve(state, item["method"], item["url"])
        headers = {"Content-Type": "application/json", **answer.headers}
        responses.append({"id": item["id"], "status": answer.status, "headers": headers, "body": answer.body})
    # Graph answers in any order; a seeded shuffle keeps runs repeatable.
    random.Random(f"{state.config.seed}:{stats.batch_requests}").shuffle(responses)
    return json_response({"responses": responses})


def create_app(state: SandboxState) -> web.Application:
    app = web.Application(
        middlewares=[
            # Inside a batch every item counts against the ceiling on its own, not the envelope.
            fault_middleware("graph", state, ERRORS, lambda request: not request.path.endswith("/$batch")),
            bearer_middleware(state, ERRORS, "InvalidAuthenticationToken"),
        ]
    )
    app[STATE_KEY] = state
    app.router.add_post("/v1.0/$batch", _batch)
    app.router.add_get("/v1.0/{path:.+}", _single)
    return app
