"""Every fault kind, as a client sees it on the wire; set at start and at run time."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.fixtures.sandbox import BEARER_HEADERS, THREATSTREAM_HEADERS, ManualClock, SandboxFactory
from tibridge.sandbox import SandboxServer

SEARCH = "/v2/intelligence/"


def threatstream_client(server: SandboxServer, timeout: float = 10) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.endpoints.threatstream, headers=THREATSTREAM_HEADERS, timeout=timeout)


async def set_faults(server: SandboxServer, patch: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.base_url) as control:
        return await control.post("/_sandbox/faults", json=patch)


async def test_latency_is_added_to_every_request(sandbox_factory: SandboxFactory) -> None:
    clock = ManualClock()
    async with (
        sandbox_factory(clock=clock, faults={"threatstream": {"latency_ms": 50, "jitter_ms": 20}}) as server,
        threatstream_client(server) as client,
    ):
        for _ in range(3):
            assert (await client.get(SEARCH)).status_code == 200
    assert len(clock.sleeps) == 3
    assert all(0.05 <= delay < 0.07 for delay in clock.sleeps)


@pytest.mark.parametrize(
    ("fault", "status", "shape"),
    [
        ({"p500": 1}, 500, {"message"}),
        ({"p503": 1}, 503, {"message"}),
        ({"p429": 1, "retry_after_seconds": 4}, 429, {"message"}),
    ],
)
async def test_status_faults_answer_in_the_api_error_shape(
    sandbox_factory: SandboxFactory, fault: dict[str, float], status: int, shape: set[str]
) -> None:
    async with sandbox_factory(faults={"threatstream": fault}) as server, threatstream_client(server) as client:
        response = await client.get(SEARCH)
    assert response.status_code == status
    assert set(response.json()) == shape
    if status == 429:
        assert response.headers["Retry-After"] == "4"


async def test_graph_500_is_the_field_observed_general_exception(sandbox_factory: SandboxFactory) -> None:
    async with (
        sandbox_factory(faults={"graph": {"p500": 1}}) as server,
        httpx.AsyncClient(base_url=server.endpoints.graph, headers=BEARER_HEADERS) as client,
    ):
        response = await client.get("/security/threatIntelligence/hosts/a.example/reputation")
    assert response.status_code == 500
    assert response.json()["error"] | {"innerError": None} == {
        "code": "generalException",
        "message": "Error retrieving reputation",
        "innerError": None,
    }


async def test_malformed_json_is_a_200_that_does_not_parse(sandbox_factory: SandboxFactory) -> None:
    async with (
        sandbox_factory(faults={"graph": {"p_malformed": 1}}) as server,
        httpx.AsyncClient(base_url=server.endpoints.graph, headers=BEARER_HEADERS) as client,
    ):
        response = await client.get("/security/threatIntelligence/hosts/a.example/reputation")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


async def test_a_dropped_connection_gets_no_answer(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(faults={"threatstream": {"p_drop": 1}}) as server:
        async with threatstream_client(server) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(SEARCH)
        assert server.stats()["requests"]["threatstream"] == {"dropped": 1}


async def test_a_hung_request_outlasts_the_client_timeout(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(faults={"loganalytics": {"p_hang": 1, "hang_seconds": 60}}) as server:
        url = f"{server.endpoints.loganalytics}/v1/workspaces/{server.endpoints.workspace_id}/query"
        async with httpx.AsyncClient(timeout=0.3) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(url, json={"query": "x"}, headers=BEARER_HEADERS)
        for _ in range(200):  # the server notices the disconnect on its own schedule
            if server.stats()["requests"]["loganalytics"]:
                break
            await asyncio.sleep(0.05)
        assert server.stats()["requests"]["loganalytics"] == {"hung": 1}


async def test_a_hang_that_ends_answers_504(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(faults={"loganalytics": {"p_hang": 1, "hang_seconds": 0.05}}) as server:
        url = f"{server.endpoints.loganalytics}/v1/workspaces/{server.endpoints.workspace_id}/query"
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(url, json={"query": "x"}, headers=BEARER_HEADERS)
    assert (response.status_code, response.json()["error"]["code"]) == (504, "GatewayTimeout")


async def test_the_rate_ceiling_refills_with_time(sandbox_factory: SandboxFactory) -> None:
    clock = ManualClock()
    async with (
        sandbox_factory(clock=clock, faults={"threatstream": {"rate_ceiling": 2, "burst": 2}}) as server,
        threatstream_client(server) as client,
    ):
        statuses = [(await client.get(SEARCH)).status_code for _ in range(3)]
        limited = await client.get(SEARCH)
        clock.advance(0.5)
        refilled = await client.get(SEARCH)
    assert statuses == [200, 200, 429]
    assert limited.headers["Retry-After"] == "1"
    assert refilled.status_code == 200


async def test_requests_inside_an_announced_retry_after_are_counted(sandbox_factory: SandboxFactory) -> None:
    clock = ManualClock()
    async with sandbox_factory(clock=clock, faults={"threatstream": {"p429": 1, "retry_after_seconds": 2}}) as server:
        async with threatstream_client(server) as client:
            assert (await client.get(SEARCH)).status_code == 429
            assert (await set_faults(server, {"threatstream": {"p429": 0}})).status_code == 200
            clock.advance(0.1)  # within the propagation grace: not counted
            await client.get(SEARCH)
            clock.advance(0.5)
            await client.get(SEARCH)
            clock.advance(2.0)  # the window is over
            await client.get(SEARCH)
        stats = server.stats()
    assert stats["inside_retry_after"] == {"loganalytics": 0, "graph": 0, "threatstream": 1}
    assert stats["requests"]["threatstream"] == {"200": 3, "429": 1}


async def test_faults_change_at_run_time_and_bad_ones_are_refused(sandbox: SandboxServer) -> None:
    async with threatstream_client(sandbox) as client:
        assert (await client.get(SEARCH)).status_code == 200
        changed = await set_faults(sandbox, {"threatstream": {"p503": 1}})
        assert changed.json()["threatstream"]["p503"] == 1
        assert (await client.get(SEARCH)).status_code == 503
        await set_faults(sandbox, {"threatstream": {"p503": 0}})
        assert (await client.get(SEARCH)).status_code == 200
    refused = await set_faults(sandbox, {"graph": {"p429": 3}})
    assert refused.status_code == 400
    assert "graph" in refused.json()["message"]


async def test_the_same_seed_injects_the_same_faults(sandbox_factory: SandboxFactory) -> None:
    async def statuses(seed: int) -> list[int]:
        async with (
            sandbox_factory(seed=seed, indicators=0, faults={"threatstream": {"p500": 0.3, "p503": 0.3}}) as server,
            threatstream_client(server) as client,
        ):
            return [(await client.get(SEARCH)).status_code for _ in range(30)]

    first = await statuses(7)
    assert first == await statuses(7)
    assert first != await statuses(8)
    assert {200, 500, 503} == set(first)
