"""Log Analytics query API: POST {endpoint}/v1/workspaces/{id}/query, as the real service answers it.

Per identity (the sandbox has one) at most `loganalytics_max_concurrent` queries run at once and
`loganalytics_requests_per_window` requests pass per `loganalytics_window_seconds`; beyond either, 429
ThrottledError with Retry-After. A workspace that holds no rows at all answers 204 No Content.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from aiohttp import web

from tibridge.sandbox.httpkit import STATE_KEY, ApiErrors, bearer_middleware, fault_middleware, json_response
from tibridge.sandbox.kql import KqlError, Shape, parse
from tibridge.sandbox.state import SandboxState
from tibridge.sandbox.tables import parse_timespan

PREFIX = "/loganalytics"


def _error_body(code: str, message: str, innererror: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "code": code, "correlationId": str(uuid.uuid4())}
    if innererror is not None:
        error["innererror"] = innererror
    return {"error": error}


ERRORS = ApiErrors(
    body=_error_body,
    codes={
        400: ("BadArgumentError", "The request had some invalid properties"),
        401: ("AuthorizationRequiredError", "Valid authentication was not provided"),
        403: (
            "InsufficientAccessError",
            "The provided credentials have insufficient access to perform the requested operation",
        ),
        404: ("PathNotFoundError", "The requested path does not exist"),
        405: ("MethodNotAllowed", "The HTTP method is not allowed here; POST the query."),
        429: ("ThrottledError", "Too many requests; retry after the number of seconds in Retry-After."),
        500: ("InternalServerError", "The server encountered an error while processing the query."),
        503: ("ServiceUnavailableError", "The service is temporarily unavailable."),
        504: ("GatewayTimeout", "The query did not finish in time."),
    },
)


def _bad_argument(innererror: dict[str, Any]) -> web.Response:
    body = _error_body("BadArgumentError", "The request had some invalid properties", innererror)
    return json_response(body, 400)


def _kql_error(error: KqlError) -> web.Response:
    detail: dict[str, Any] = {"code": "SYN0002" if error.syntax else "SEM0100", "message": str(error)}
    if error.position is not None:
        detail.update(pos=error.position, token=error.token)
    return _bad_argument(
        {
            "code": "SyntaxError" if error.syntax else "SemanticError",
            "message": "A recognition error occurred in the query." if error.syntax else "A semantic error occurred.",
            "innererror": detail,
        }
    )


def _partial_error(row_cap: int) -> dict[str, Any]:
    return {
        "code": "PartialError",
        "message": "There were some errors when processing your query.",
        "details": [
            {
                "code": "EngineError",
                "message": "Something went wrong processing your query on the server.",
                "innererror": {
                    "code": "-2133196797",
                    "message": f"Query result set has exceeded the internal record count limit {row_cap} records "
                    "(E_QUERY_RESULT_SET_TOO_LARGE, 0x80DA0003).",
                    "severity": 2,
                    "severityName": "Error",
                },
            }
        ],
    }


async def _query(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if state.config.loganalytics_forbidden:
        return ERRORS.response(403)
    if request.match_info["workspace_id"] != state.config.workspace_id:
        return ERRORS.response(404, message="The requested path does not exist: no such workspace")
    try:
        body = await request.json()
    except json.JSONDecodeError:
        return _bad_argument({"code": "InvalidJson", "message": "The request body is not valid JSON."})
    if not isinstance(body, dict) or not isinstance(body.get("query"), str):
        return _bad_argument({"code": "QueryMissing", "message": "The body needs a 'query' string."})
    try:
        timespan = parse_timespan(body.get("timespan"), state.clock.now())
    except ValueError as error:
        return _bad_argument({"code": "InvalidTimespan", "message": str(error)})
    tables = state.tables
    try:
        query = parse(
            body["query"],
            {name: table.types for name, table in tables.items()},
            {name: table.id_column for name, table in tables.items()},
        )
    except KqlError as error:
        return _kql_error(error)
    stats = state.stats.loganalytics
    stats.queries += 1
    stats.count_queries += query.shape is not Shape.NEWEST_PER_ID
    stats.peak_concurrent = max(stats.peak_concurrent, state.loganalytics_limits.in_flight)
    if not state.dataset.rows and state.config.loganalytics_no_data == "204":
        stats.no_content += 1
        return web.Response(status=204)
    result = tables[query.table].query(query, timespan, state.config.row_cap)
    if query.shape is Shape.NEWEST_PER_ID:
        stats.rows_returned += len(result.fragments)
    columns = json.dumps([{"name": name, "type": str(kind)} for name, kind in result.columns])
    text = '{"tables":[{"name":"PrimaryResult","columns":' + columns + ',"rows":[' + ",".join(result.fragments) + "]}]"
    if result.truncated:
        stats.partial_results += 1
        text += ',"error":' + json.dumps(_partial_error(state.config.row_cap))
    # JSON text can hold a lone UTF-16 surrogate only as a \uXXXX escape, which is what backslashreplace writes
    # (UTF-8 encodes every other character); the real service answers such values in valid UTF-8 too.
    body = (text + "}").encode("utf-8", "backslashreplace")
    return web.Response(body=body, content_type="application/json", charset="utf-8")


def create_app(state: SandboxState) -> web.Application:
    app = web.Application(
        middlewares=[
            fault_middleware("loganalytics", state, ERRORS, lambda request: True, state.loganalytics_limits),
            bearer_middleware(state, ERRORS, "AuthorizationRequiredError"),
        ]
    )
    app[STATE_KEY] = state
    app.router.add_post("/v1/workspaces/{workspace_id}/query", _query)
    return app
