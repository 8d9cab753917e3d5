"""What the three API stand-ins share on the HTTP side: error shapes and the fault middleware."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from tibridge.sandbox.faults import Api, FaultKind, RequestLimits
from tibridge.sandbox.state import SandboxState

MALFORMED_BODY = b'{"value": [{"truncated": tr'


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
        content_type="application/json",
        headers=headers,
    )


@dataclass(frozen=True)
class ApiErrors:
    """How one API spells its errors: a body builder, and the code/message it uses per fault status."""

    body: Callable[[str, str], dict[str, Any]]
    codes: Mapping[int, tuple[str, str]]

    def response(
        self, status: int, code: str | None = None, message: str | None = None, retry_after: int | None = None
    ) -> web.Response:
        default_code, default_message = self.codes.get(status, ("Error", "The request failed."))
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return json_response(self.body(code or default_code, message or default_message), status, headers)


_STATUS_OF = {
    FaultKind.RATE_LIMITED: 429,
    FaultKind.THROTTLED: 429,
    FaultKind.ERROR_500: 500,
    FaultKind.ERROR_503: 503,
}


def fault_middleware(
    api: Api,
    state: SandboxState,
    errors: ApiErrors,
    counts_against_ceiling: Callable[[web.Request], bool],
    limits: RequestLimits | None = None,
) -> Any:
    """Counts every request of `api`, notes arrivals inside an announced Retry-After window, turns away what
    the API's documented `limits` refuse (a place is held from arrival to answer, injected latency included),
    and injects the configured faults before the request reaches its handler."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        clock = state.clock
        if state.ledger.inside(api, clock.monotonic()):
            state.stats.inside_retry_after[api] += 1
        refusal = limits.admit() if limits is not None else None
        if refusal is not None:
            response = errors.response(429, message=refusal.message, retry_after=refusal.retry_after)
            state.announce_retry_after(api, refusal.retry_after)
            state.stats.record_status(api, 429)
            return response
        try:
            return await _faulted(request, handler)
        finally:
            if limits is not None:
                limits.release()

    async def _faulted(request: web.Request, handler: Handler) -> web.StreamResponse:
        clock = state.clock
        decision = state.faults.decide(api, ceiling=counts_against_ceiling(request))
        if decision.delay_seconds:
            await clock.sleep(decision.delay_seconds)
        response: web.StreamResponse
        if decision.kind is FaultKind.DROP:
            state.stats.record_status(api, "dropped")
            if request.transport is not None:
                request.transport.close()
            return web.Response()  # never reaches the caller: the connection is gone
        if decision.kind is FaultKind.HANG:
            try:
                await clock.sleep(state.faults.faults[api].hang_seconds)
            except asyncio.CancelledError:  # the caller gave up and disconnected
                state.stats.record_status(api, "hung")
                raise
            response = errors.response(504)
        elif decision.kind is FaultKind.MALFORMED:
            response = web.Response(status=200, body=MALFORMED_BODY, content_type="application/json")
        elif decision.kind in _STATUS_OF:
            response = errors.response(_STATUS_OF[decision.kind], retry_after=decision.retry_after)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as error:
                response = errors.response(error.status)
        retry_after = response.headers.get("Retry-After")
        if retry_after is not None and retry_after.isdigit():
            state.announce_retry_after(api, float(retry_after))
        state.stats.record_status(api, response.status)
        return response

    return middleware


def bearer_middleware(state: SandboxState, errors: ApiErrors, code: str) -> Any:
    """Log Analytics and Graph: `Authorization: Bearer <the sandbox token>` or 401."""
    expected = f"Bearer {state.config.bearer_token.get_secret_value()}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        presented = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(presented, expected):
            return errors.response(401, code, "Send Authorization: Bearer <token> with the sandbox token.")
        return await handler(request)

    return middleware


STATE_KEY = web.AppKey("sandbox_state", SandboxState)
