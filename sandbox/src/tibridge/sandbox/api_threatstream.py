"""Anomali ThreatStream: import sessions with approval, direct upsert, search."""

from __future__ import annotations

import hmac
import json
import re
import uuid
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler

from tibridge.sandbox.httpkit import STATE_KEY, ApiErrors, fault_middleware, json_response
from tibridge.sandbox.intel import VALUE_FIELDS, IntelRequestError, parse_import
from tibridge.sandbox.state import SandboxState

PREFIX = "/threatstream"
MAX_PAGE = 1000
DEFAULT_PAGE = 20

ERRORS = ApiErrors(
    body=lambda code, message: {"message": message},
    codes={
        400: ("BadRequest", "The request is not valid."),
        401: ("Unauthorized", "Missing or wrong API key: send Authorization: apikey <username>:<api_key>."),
        404: ("NotFound", "No such ThreatStream resource (paths end with '/')."),
        405: ("MethodNotAllowed", "This method is not allowed on this resource."),
        429: ("TooManyRequests", "Too many requests; retry after the number of seconds in Retry-After."),
        500: ("InternalServerError", "Internal server error."),
        503: ("ServiceUnavailable", "Service temporarily unavailable."),
        504: ("GatewayTimeout", "Gateway timeout."),
    },
)


def _bad_request(message: str) -> web.Response:
    return json_response({"message": message}, 400)


def _apikey_middleware(state: SandboxState) -> Any:
    config = state.config
    expected = f"apikey {config.threatstream_username}:{config.threatstream_api_key.get_secret_value()}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if {"api_key", "username"} & set(request.query):
            return _bad_request(
                "Credentials in the query string are refused; send Authorization: apikey <username>:<api_key>."
            )
        if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            return ERRORS.response(401)
        return await handler(request)

    return middleware


def _refused_value(state: SandboxState, values: Iterable[Any]) -> str | None:
    """The first value the `reject_values` fault refuses, if any."""
    pattern = state.faults.faults["threatstream"].reject_values
    if pattern is None:
        return None
    return next((value for value in values if isinstance(value, str) and re.search(pattern, value)), None)


def _count(request: web.Request, endpoint: str) -> SandboxState:
    state = request.app[STATE_KEY]
    state.stats.threatstream.requests[endpoint] += 1
    return state


async def _import(request: web.Request) -> web.Response:
    state = _count(request, "import")
    form = await request.post()
    fields: dict[str, str] = {}
    for name, value in form.items():
        if isinstance(value, web.FileField):
            value = value.file.read()
        fields[name] = value if isinstance(value, str) else bytes(value).decode("utf-8", errors="replace")
    refused = _refused_value(state, fields.get("datatext", "").split())
    if refused is not None:
        return _bad_request(f"datatext: {refused!r} is not accepted.")
    try:
        session = state.intel.import_datatext(parse_import(fields, state.clock.now()))
    except IntelRequestError as error:
        return _bad_request(str(error))
    state.stats.threatstream.batch_sizes[session.num_indicators] += 1
    return json_response({"success": True, "import_session_id": str(session.id), "job_id": str(uuid.uuid4())}, 202)


def _session_id(request: web.Request) -> int | None:
    text = request.match_info["session_id"]
    return int(text) if text.isdigit() else None


async def _session(request: web.Request) -> web.Response:
    state = _count(request, "importsession")
    session_id = _session_id(request)
    session = state.intel.sessions.get(session_id) if session_id is not None else None
    if session is None:
        return ERRORS.response(404, message=f"No import session {request.match_info['session_id']}.")
    return json_response(session.to_json())


async def _approve_all(request: web.Request) -> web.Response:
    state = _count(request, "approve_all")
    session_id = _session_id(request)
    session = state.intel.approve_all(session_id) if session_id is not None else None
    if session is None:
        return ERRORS.response(404, message=f"No import session {request.match_info['session_id']}.")
    return json_response(session.to_json())


async def _upsert(request: web.Request) -> web.Response:
    state = _count(request, "upsert")
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _bad_request("The body is not valid JSON.")
    objects = body.get("objects") if isinstance(body, dict) else None
    if isinstance(objects, list):
        values = (obj.get(name) for obj in objects if isinstance(obj, dict) for name in VALUE_FIELDS)
        refused = _refused_value(state, values)
        if refused is not None:
            return _bad_request(f"objects: {refused!r} is not accepted.")
    try:
        state.intel.upsert(body)
    except IntelRequestError as error:
        return _bad_request(str(error))
    state.stats.threatstream.batch_sizes[len(body["objects"])] += 1
    return json_response({"success": True}, 202)


async def _search(request: web.Request) -> web.Response:
    state = _count(request, "search")
    query = request.query
    try:
        limit = min(int(query.get("limit", DEFAULT_PAGE)), MAX_PAGE)
        offset = int(query.get("offset", 0))
    except ValueError:
        return _bad_request("limit and offset must be integers.")
    if limit < 1 or offset < 0:
        return _bad_request("limit must be at least 1 and offset at least 0.")
    filters = {name: query[name] for name in ("value", "status", "itype", "type") if name in query}
    objects, total = state.intel.search(filters, limit, offset)
    following = offset + limit
    base = f"{PREFIX}/api/v2/intelligence/?"
    meta = {
        "limit": limit,
        "offset": offset,
        "total_count": total,
        "next": base + urlencode({**filters, "limit": limit, "offset": following}) if following < total else None,
        "previous": base + urlencode({**filters, "limit": limit, "offset": max(0, offset - limit)}) if offset else None,
    }
    return json_response({"meta": meta, "objects": [obj.to_json() for obj in objects]})


def create_app(state: SandboxState) -> web.Application:
    app = web.Application(
        middlewares=[
            fault_middleware("threatstream", state, ERRORS, lambda request: True),
            _apikey_middleware(state),
        ],
        client_max_size=64 * 1024**2,
    )
    app[STATE_KEY] = state
    app.router.add_post("/api/v2/intelligence/import/", _import)
    app.router.add_get("/api/v1/importsession/{session_id}/", _session)
    app.router.add_patch("/api/v1/importsession/{session_id}/approve_all/", _approve_all)
    app.router.add_patch("/api/v2/intelligence/", _upsert)
    app.router.add_get("/api/v2/intelligence/", _search)
    return app
