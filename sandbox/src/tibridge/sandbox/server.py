"""One aiohttp server on 127.0.0.1 serving Log Analytics, Graph and ThreatStream, plus /_sandbox control.

async with SandboxServer(SandboxConfig(indicators=500), port=0) as server:
    os.environ.update(server.env())
    ...
    stats = server.state.stats.to_json(server.state.intel)
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Collection
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from tibridge.common.clock import Clock, SystemClock
from tibridge.common.contracts import Classification
from tibridge.common.web import WebServer
from tibridge.sandbox import api_graph, api_loganalytics, api_threatstream
from tibridge.sandbox.config import SandboxConfig
from tibridge.sandbox.dataset import Dataset
from tibridge.sandbox.drift import NoDriftPossible, seed_drift
from tibridge.sandbox.expected import ExpectedOutcome, ExpectedOutcomeUnavailable
from tibridge.sandbox.faults import FaultSpecError, merge_faults
from tibridge.sandbox.httpkit import STATE_KEY, json_response
from tibridge.sandbox.reconcile import reconcile
from tibridge.sandbox.state import SandboxState
from tibridge.sandbox.vocabulary import Permission

CONTROL_PREFIX = "/_sandbox"
# How long in-flight requests (e.g. injected hangs) get when the server stops.
SHUTDOWN_TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True)
class SandboxEndpoints:
    loganalytics: str  # the LogsQueryClient endpoint; the SDK appends /v1/workspaces/{id}/query
    graph: str  # .../graph/v1.0
    threatstream: str  # .../threatstream/api
    workspace_id: str


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return json_response(state.stats.to_json(state.intel))


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return json_response({"reset": True})


async def _get_faults(request: web.Request) -> web.Response:
    faults = request.app[STATE_KEY].faults.faults
    return json_response({api: spec.model_dump() for api, spec in faults.items()})


async def _set_faults(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        patch = await request.json()
        if not isinstance(patch, dict):
            raise FaultSpecError('send a JSON object like {"graph": {"p429": 0.1}}')
        state.faults.replace(merge_faults(state.faults.faults, patch))
    except (json.JSONDecodeError, FaultSpecError) as error:
        return json_response({"message": str(error)}, 400)
    return await _get_faults(request)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() in ("1", "true", "yes")


def _expected_of(request: web.Request) -> ExpectedOutcome:
    """Query parameters mirror `SandboxServer.expected`: threshold, forward_unscorable,
    allowed_classifications (comma-separated), drop_non_global."""
    query = request.query
    allowed = query.get("allowed_classifications")
    return request.app[STATE_KEY].expected(
        threshold=int(query.get("threshold", 75)),
        forward_unscorable=_flag(request, "forward_unscorable"),
        allowed_classifications=[Classification(c) for c in allowed.split(",")] if allowed else None,
        drop_non_global=query.get("drop_non_global", "true").lower() != "false",
    )


def _unavailable(error: ValueError) -> web.Response:
    return json_response({"message": str(error)}, 404 if isinstance(error, ExpectedOutcomeUnavailable) else 400)


async def _expected(request: web.Request) -> web.Response:
    try:
        return json_response(_expected_of(request).to_json())
    except ValueError as error:  # also ExpectedOutcomeUnavailable
        return _unavailable(error)


async def _reconcile(request: web.Request) -> web.Response:
    """What `reconcile` finds for the expected outcome of the same query parameters as /_sandbox/expected."""
    try:
        problems = reconcile(_expected_of(request), request.app[STATE_KEY].intel)
    except ValueError as error:
        return _unavailable(error)
    return json_response({"ok": not problems, "problems": problems})


async def _threatstream_objects(request: web.Request) -> web.Response:
    """`?include=ours` (default: what tibridge wrote), `foreign` (seeded before the run) or `all`; each object
    as the API shows it, plus `foreign` with `include=all`."""
    intel = request.app[STATE_KEY].intel
    include = request.query.get("include", "ours")
    if include not in ("ours", "foreign", "all"):
        return json_response({"message": "include must be ours, foreign or all"}, 400)
    intel.advance()
    objects = [
        obj.to_json() | ({"foreign": obj.foreign} if include == "all" else {})
        for obj in intel.objects.values()
        if include == "all" or obj.foreign == (include == "foreign")
    ]
    return json_response({"objects": objects})


async def _threatstream_session(request: web.Request) -> web.Response:
    """Which observables a session accepted and rejected, and why: the sandbox's record, not a real API."""
    intel = request.app[STATE_KEY].intel
    text = request.match_info["session_id"]
    session = intel.sessions.get(int(text)) if text.isdigit() else None
    if session is None:
        return json_response({"message": f"No import session {text}."}, 404)
    intel.advance()
    return json_response(session.details())


async def _set_permissions(request: web.Request) -> web.Response:
    """An operator changes what tibridge's ThreatStream key may do: `{"permissions": ["import", ...]}`."""
    state = request.app[STATE_KEY]
    try:
        body = await request.json()
        state.threatstream_permissions = frozenset(Permission(name) for name in body["permissions"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        names = ", ".join(permission.value for permission in Permission)
        return json_response({"message": f'send {{"permissions": [...]}} with any of {names}'}, 400)
    return json_response({"permissions": sorted(state.threatstream_permissions)})


async def _drift(request: web.Request) -> web.Response:
    """Seeds a missing, a stale and an unexpected object of ours (`tibridge.sandbox.drift`); answers their values.
    `?owner_tag=` (default tibridge) and the query parameters of /_sandbox/expected."""
    state = request.app[STATE_KEY]
    try:
        drift = seed_drift(
            state.intel, _expected_of(request), request.query.get("owner_tag", "tibridge"), state.clock.now()
        )
    except NoDriftPossible as error:
        return json_response({"message": str(error)}, 409)
    except ValueError as error:
        return _unavailable(error)
    return json_response(drift.to_json())


def build_app(state: SandboxState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024**2)
    app[STATE_KEY] = state
    app.router.add_get(f"{CONTROL_PREFIX}/stats", _stats)
    app.router.add_post(f"{CONTROL_PREFIX}/reset", _reset)
    app.router.add_get(f"{CONTROL_PREFIX}/faults", _get_faults)
    app.router.add_post(f"{CONTROL_PREFIX}/faults", _set_faults)
    app.router.add_get(f"{CONTROL_PREFIX}/expected", _expected)
    app.router.add_get(f"{CONTROL_PREFIX}/reconcile", _reconcile)
    app.router.add_get(f"{CONTROL_PREFIX}/threatstream/objects", _threatstream_objects)
    app.router.add_get(f"{CONTROL_PREFIX}/threatstream/sessions/{{session_id}}", _threatstream_session)
    app.router.add_post(f"{CONTROL_PREFIX}/threatstream/permissions", _set_permissions)
    app.router.add_post(f"{CONTROL_PREFIX}/threatstream/drift", _drift)
    app.add_subapp(api_loganalytics.PREFIX, api_loganalytics.create_app(state))
    app.add_subapp(api_graph.PREFIX, api_graph.create_app(state))
    app.add_subapp(api_threatstream.PREFIX, api_threatstream.create_app(state))
    return app


class SandboxServer(WebServer):
    def __init__(self, config: SandboxConfig | None = None, *, port: int = 0, clock: Clock | None = None) -> None:
        self.config = config or SandboxConfig()
        self.state = SandboxState(self.config, clock or SystemClock())
        super().__init__(
            build_app(self.state),
            self.config.host,
            port,
            port_hint="choose another --port",
            handler_cancellation=True,  # a caller that gives up on a hung request ends its handler
            shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
            access_log=None,
        )

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the sandbox is not running; use `async with SandboxServer(...)` first")
        return f"http://{self.config.host}:{self.port}"

    @property
    def endpoints(self) -> SandboxEndpoints:
        return SandboxEndpoints(
            loganalytics=self.base_url + api_loganalytics.PREFIX,
            graph=self.base_url + api_graph.PREFIX + "/v1.0",
            threatstream=self.base_url + api_threatstream.PREFIX + "/api",
            workspace_id=self.config.workspace_id,
        )

    @property
    def dataset(self) -> Dataset:
        return self.state.dataset

    def env(self) -> dict[str, str]:
        """The TIBRIDGE_* environment that points every service at this sandbox."""
        endpoints = self.endpoints
        return {
            "TIBRIDGE_DEV_MODE": "true",
            "TIBRIDGE_CREDENTIAL": "sandbox",
            "TIBRIDGE_LOGANALYTICS_ENDPOINT": endpoints.loganalytics,
            "TIBRIDGE_LOGANALYTICS_WORKSPACE_ID": endpoints.workspace_id,
            "TIBRIDGE_GRAPH_BASE_URL": endpoints.graph,
            "TIBRIDGE_THREATSTREAM_BASE_URL": endpoints.threatstream,
            "TIBRIDGE_THREATSTREAM_USERNAME": self.config.threatstream_username,
            "TIBRIDGE_THREATSTREAM_API_KEY": self.config.threatstream_api_key.get_secret_value(),
            "TIBRIDGE_COLLECTOR_INITIAL_LOOKBACK": self._lookback(),
        }

    def _lookback(self) -> str:
        """A first collector pass that reaches back past the oldest row served (whole days, one to spare)."""
        rows = self.state.dataset.rows
        oldest = rows[0].time_generated if rows else self.state.clock.now()
        return f"P{math.ceil((self.state.clock.now() - oldest) / timedelta(days=1)) + 1}D"

    def write_env_file(self, path: Path) -> None:
        """`NAME=value` lines, shell-quoted, so `set -a; . PATH; set +a` loads them."""
        lines = [f"{name}={shlex.quote(value)}\n" for name, value in self.env().items()]
        path.write_text("".join(lines), encoding="utf-8")

    def expected(
        self,
        threshold: int = 75,
        forward_unscorable: bool = False,
        allowed_classifications: Collection[Classification] | None = None,
        drop_non_global: bool = True,
    ) -> ExpectedOutcome:
        return self.state.expected(threshold, forward_unscorable, allowed_classifications, drop_non_global)

    def stats(self) -> dict[str, Any]:
        return self.state.stats.to_json(self.state.intel)

    def reconcile(self, expected: ExpectedOutcome | None = None) -> list[str]:
        """What /_sandbox/reconcile answers, for `expected` (default: the default expected outcome)."""
        return reconcile(expected or self.expected(), self.state.intel)
