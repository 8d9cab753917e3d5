"""MDTI host reputation on the Graph stand-in: single calls and JSON batching."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fixtures.sandbox import BEARER_HEADERS, ManualClock, SandboxFactory
from tibridge.sandbox import SandboxServer
from tibridge.sandbox.reputation import reputation_for

SEED = 7
KNOWN = next(f"known{i}.example.com" for i in range(1000) if reputation_for(f"known{i}.example.com", SEED))
NEVER_SEEN = next(f"never{i}.example.com" for i in range(1000) if reputation_for(f"never{i}.example.com", SEED) is None)


def reputation_url(host: str) -> str:
    return f"/security/threatIntelligence/hosts/{host}/reputation"


def batch(hosts: list[str], ids: list[str] | None = None) -> dict[str, Any]:
    ids = ids or [str(i) for i in range(len(hosts))]
    return {"requests": [{"id": i, "method": "GET", "url": reputation_url(h)} for i, h in zip(ids, hosts, strict=True)]}


@pytest.fixture
async def graph(sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.endpoints.graph, headers=BEARER_HEADERS, timeout=10) as client:
        yield client


async def test_both_url_forms_answer_the_seeded_reputation(graph: httpx.AsyncClient) -> None:
    plain = await graph.get(reputation_url(KNOWN))
    odata = await graph.get(f"/security/threatIntelligence/hosts('{KNOWN}')/reputation")
    assert plain.status_code == odata.status_code == 200
    body = plain.json()
    assert body == odata.json()
    expected = reputation_for(KNOWN, SEED)
    assert expected is not None
    assert (body["score"], body["classification"]) == (expected.score, str(expected.classification))
    assert body["@odata.type"] == "#microsoft.graph.security.hostReputation"
    assert [rule["name"] for rule in body["rules"]] == [rule.name for rule in expected.rules]


async def test_an_ip_address_is_a_host_too(graph: httpx.AsyncClient) -> None:
    response = await graph.get(reputation_url("2001:4860:4860::8888"))
    assert response.status_code in (200, 404)


async def test_never_seen_is_404_or_unknown_as_configured(
    graph: httpx.AsyncClient, sandbox_factory: SandboxFactory
) -> None:
    missing = await graph.get(reputation_url(NEVER_SEEN))
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "NotFound")
    assert "request-id" in missing.json()["error"]["innerError"]
    async with (
        sandbox_factory(never_seen="unknown") as server,
        httpx.AsyncClient(base_url=server.endpoints.graph, headers=BEARER_HEADERS) as client,
    ):
        unknown = await client.get(reputation_url(NEVER_SEEN))
    assert unknown.status_code == 200
    assert (unknown.json()["classification"], unknown.json()["score"], unknown.json()["rules"]) == ("unknown", 0, [])


async def test_without_the_bearer_token_401(sandbox: SandboxServer) -> None:
    async with httpx.AsyncClient(base_url=sandbox.endpoints.graph) as client:
        response = await client.get(reputation_url(KNOWN), headers={"Authorization": "Bearer wrong"})
    assert (response.status_code, response.json()["error"]["code"]) == (401, "InvalidAuthenticationToken")


@pytest.mark.parametrize(
    ("refusal", "status", "code", "words"),
    [
        ("forbidden", 403, "Forbidden", "does not contain valid permissions"),
        ("security_reader", 403, "Forbidden", "Security Reader"),
        ("tenant_unverified", 403, "Forbidden", "Verification state"),
        # Before the 2026 merge a tenant without the licence got this for every host (external-apis.md §2).
        ("licence_500", 500, "generalException", "Error retrieving reputation"),
    ],
)
async def test_a_refusing_tenant_gets_graphs_error_body_on_single_gets_and_every_batch_item(
    sandbox_factory: SandboxFactory, refusal: str, status: int, code: str, words: str
) -> None:
    async with (
        sandbox_factory(graph_refusal=refusal, indicators=0) as server,
        httpx.AsyncClient(base_url=server.endpoints.graph, headers=BEARER_HEADERS) as client,
    ):
        single = await client.get(reputation_url(KNOWN))
        keyed = await client.get(f"/security/threatIntelligence/hosts('{NEVER_SEEN}')/reputation")
        batched = await client.post("/$batch", json=batch([KNOWN, NEVER_SEEN, "198.51.100.7"]))
    for answer in (single, keyed):
        error = answer.json()["error"]
        assert (answer.status_code, error["code"]) == (status, code)
        assert words in error["message"]
        assert {"request-id", "date"} <= error["innerError"].keys()
    assert batched.status_code == 200
    assert {(item["status"], item["body"]["error"]["code"]) for item in batched.json()["responses"]} == {(status, code)}


async def test_graph_forbidden_is_the_older_spelling_of_the_forbidden_refusal(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(graph_forbidden=True, indicators=0) as server:
        assert server.config.graph_refusal == "forbidden"


async def test_unknown_future_value_reaches_the_wire_in_classifications_and_rule_severities(
    sandbox_factory: SandboxFactory,
) -> None:
    """external-apis.md §2: `unknownFutureValue` is documented for classification and rule severity."""
    hosts = [f"future{i}.example.com" for i in range(3000)]
    future_class = next(h for h in hosts if (r := reputation_for(h, SEED)) and r.classification == "unknownFutureValue")
    future_rule = next(
        h for h in hosts if (r := reputation_for(h, SEED)) and any(x.severity == "unknownFutureValue" for x in r.rules)
    )
    async with (
        sandbox_factory(indicators=0) as server,
        httpx.AsyncClient(base_url=server.endpoints.graph, headers=BEARER_HEADERS) as client,
    ):
        single = (await client.get(reputation_url(future_class))).json()
        batched = (await client.post("/$batch", json=batch([future_rule]))).json()["responses"][0]["body"]
    assert single["classification"] == "unknownFutureValue"
    assert "unknownFutureValue" in {rule["severity"] for rule in batched["rules"]}


async def test_a_batch_answers_every_item_by_id_in_shuffled_order(
    graph: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    hosts = [f"host{i}.example.com" for i in range(20)]
    response = await graph.post("/$batch", json=batch(hosts))
    assert response.status_code == 200
    items = response.json()["responses"]
    assert sorted(item["id"] for item in items) == sorted(str(i) for i in range(20))
    assert [item["id"] for item in items] != [str(i) for i in range(20)]
    for item in items:
        single = await graph.get(reputation_url(hosts[int(item["id"])]))
        assert item["status"] == single.status_code
        if item["status"] == 200:
            assert item["body"]["score"] == single.json()["score"]
    graph_stats = sandbox.stats()["graph"]
    assert (graph_stats["batch_requests"], graph_stats["batch_sizes"], graph_stats["lookups"]) == (1, {"20": 1}, 40)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (batch([f"h{i}.example" for i in range(21)]), "1 to 20"),
        (batch([]), "1 to 20"),
        (batch(["a.example", "b.example"], ids=["1", "1"]), "not unique"),
        ({"requests": [{"id": 1, "url": "/x"}]}, "string 'id'"),
    ],
)
async def test_invalid_batches_are_400(graph: httpx.AsyncClient, body: dict[str, Any], message: str) -> None:
    response = await graph.post("/$batch", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"
    assert message in response.json()["error"]["message"]


async def test_batch_items_may_be_429_on_their_own(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(faults={"graph": {"p429": 0.5, "retry_after_seconds": 3}}) as server:
        async with httpx.AsyncClient(base_url=server.endpoints.graph, headers=BEARER_HEADERS) as client:
            response = await client.post("/$batch", json=batch([f"h{i}.example" for i in range(20)]))
        assert response.status_code == 200
        throttled = [item for item in response.json()["responses"] if item["status"] == 429]
        assert 0 < len(throttled) < 20
        assert all(item["headers"]["Retry-After"] == "3" for item in throttled)
        assert server.stats()["graph"]["items_429"] == len(throttled)


async def test_every_batch_item_counts_against_the_rate_ceiling(sandbox_factory: SandboxFactory) -> None:
    clock = ManualClock()
    async with (
        sandbox_factory(clock=clock, faults={"graph": {"rate_ceiling": 5, "burst": 5}}) as server,
        httpx.AsyncClient(base_url=server.endpoints.graph, headers=BEARER_HEADERS) as client,
    ):
        first = await client.post("/$batch", json=batch([f"h{i}.example" for i in range(8)]))
        clock.advance(1.0)
        second = await client.post("/$batch", json=batch([f"h{i}.example" for i in range(5)]))
    assert sorted(item["status"] == 429 for item in first.json()["responses"]) == [False] * 5 + [True] * 3
    assert not any(item["status"] == 429 for item in second.json()["responses"])
