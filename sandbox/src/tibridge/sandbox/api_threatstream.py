"""Anomali ThreatStream: asynchronous import sessions, direct upsert, change by id, search, the org whitelist."""

from __future__ import annotations

import hmac
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler

from tibridge.sandbox.httpkit import STATE_KEY, ApiErrors, fault_middleware, json_response
from tibridge.sandbox.intel import (
    IntelForbidden,
    IntelNotFound,
    IntelRequestError,
    check_search,
    iso,
    parse_import,
)
from tibridge.sandbox.state import SandboxState
from tibridge.sandbox.vocabulary import VALUE_FIELDS, Permission

PREFIX = "/threatstream"
MAX_PAGE = 1000
DEFAULT_PAGE = 20

ERRORS = ApiErrors(
    body=lambda code, message: {"message": message},
    codes={
        400: ("BadRequest", "The request is not valid."),
        401: ("Unauthorized", "Missing or wrong API key: send Authorization: apikey <username>:<api_key>."),
        403: ("Forbidden", "You do not have permission to perform this action."),
        404: ("NotFound", "No such ThreatStream resource (paths end with '/')."),
        405: ("MethodNotAllowed", "This method is not allowed on this resource."),
        429: ("TooManyRequests", "Too many requests; retry after the number of seconds in Retry-After."),
        500: ("InternalServerError", "Internal server error."),
        503: ("ServiceUnavailable", "Service temporarily unavailable."),
        504: ("GatewayTimeout", "Gateway timeout."),
    },
)
_PERMISSION_NAMES = {
    Permission.IMPORT: "Import Intelligence",
    Permission.APPROVE_IMPORT: "Approve Import",
    Permission.APPROVE_INTEL: "Approve Intel",
}


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


def _store_errors(handler: Callable[[web.Request], Awaitable[web.Response]]) -> Handler:
    """The store's refusals as ThreatStream answers them: 400, 403 or 404 with `{"message": …}`."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except IntelRequestError as error:
            return _bad_request(str(error))
        except IntelForbidden as error:
            return json_response({"message": str(error)}, 403)
        except IntelNotFound as error:
            return json_response({"message": str(error)}, 404)

    return wrapped


def _require(state: SandboxState, permission: Permission) -> None:
    if permission not in state.threatstream_permissions:
        raise IntelForbidden(
            f"User {state.config.threatstream_username} lacks the '{_PERMISSION_NAMES[permission]}' permission "
            "for this action."
        )


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


@_store_errors
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
    parsed = parse_import(fields, state.intel.rules)
    _require(state, Permission.APPROVE_IMPORT if parsed.default_state == "active" else Permission.IMPORT)
    session = state.intel.import_datatext(parsed)
    state.stats.threatstream.batch_sizes[len(session.tokens)] += 1
    return json_response({"success": True, "import_session_id": str(session.id), "job_id": str(uuid.uuid4())}, 202)


def _session_id(request: web.Request) -> int:
    text = request.match_info["session_id"]
    if not text.isdigit():
        raise IntelNotFound(f"No import session {text}.")
    return int(text)


@_store_errors
async def _session(request: web.Request) -> web.Response:
    state = _count(request, "importsession")
    return json_response(state.intel.session(_session_id(request)).to_json())


@_store_errors
async def _approve_all(request: web.Request) -> web.Response:
    state = _count(request, "approve_all")
    _require(state, Permission.APPROVE_IMPORT)
    return json_response(state.intel.approve_all(_session_id(request)).to_json())


@_store_errors
async def _upsert(request: web.Request) -> web.Response:
    state = _count(request, "upsert")
    _require(state, Permission.APPROVE_INTEL)
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
    state.intel.upsert(body)
    state.stats.threatstream.batch_sizes[len(body["objects"])] += 1
    return json_response({"success": True}, 202)


@_store_errors
async def _patch_one(request: web.Request) -> web.Response:
    state = _count(request, "patch_by_id")
    _require(state, Permission.APPROVE_INTEL)
    text = request.match_info["object_id"]
    if not text.isdigit():
        raise IntelNotFound(f"No intelligence object {text}.")
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _bad_request("The body is not valid JSON.")
    return json_response(state.intel.patch(int(text), body).to_json())


def _page(request: web.Request) -> tuple[int, int]:
    query = request.query
    try:
        limit = int(query.get("limit", DEFAULT_PAGE))
        offset = int(query.get("offset", 0))
    except ValueError:
        raise IntelRequestError("limit and offset must be integers.") from None
    if limit < 0 or offset < 0:
        raise IntelRequestError("limit and offset must be 0 or more.")
    # Tastypie: limit=0 asks for the largest page, and no page is larger than 1,000.
    return (min(limit, MAX_PAGE) or MAX_PAGE), offset


def _paged(request: web.Request, path: str, items: list[Any], total: int, limit: int, offset: int) -> web.Response:
    filters = {name: value for name, value in request.query.items() if name not in ("limit", "offset")}
    following = offset + limit
    base = f"{PREFIX}{path}?"
    meta = {
        "limit": limit,
        "offset": offset,
        "total_count": total,
        "next": base + urlencode({**filters, "limit": limit, "offset": following}) if following < total else None,
        "previous": base + urlencode({**filters, "limit": limit, "offset": max(0, offset - limit)}) if offset else None,
    }
    return json_response({"meta": meta, "objects": items})


@_store_errors
async def _search(request: web.Request) -> web.Response:
    state = _count(request, "search")
    limit, offset = _page(request)
    query = {name: value for name, value in request.query.items() if name not in ("limit", "offset")}
    check_search(query)
    objects, total = state.intel.search(query, limit, offset)
    return _paged(request, "/api/v2/intelligence/", [obj.to_json() for obj in objects], total, limit, offset)


@_store_errors
async def _whitelist(request: web.Request) -> web.Response:
    """GET /api/v1/orgwhitelist/: what an import rejects, so a client can learn why an observable was refused."""
    state = _count(request, "orgwhitelist")
    limit, offset = _page(request)
    entries = sorted(state.intel.rules.whitelist)
    created = iso(state.clock.now())
    items = [
        {"id": index + 1, "value": value, "notes": "seeded by the sandbox", "created_ts": created}
        for index, value in enumerate(entries[offset : offset + limit], start=offset)
    ]
    return _paged(request, "/api/v1/orgwhitelist/", items, len(entries), limit, offset)


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
    app.router.add_patch("/api/v2/intelligence/{object_id}/", _patch_one)
    app.router.add_get("/api/v1/orgwhitelist/", _whitelist)
    return app
