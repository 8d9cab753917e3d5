"""The Graph reputation client: what each answer means, the $batch wire shape, the bearer token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken

from tests.fixtures.clock import ManualClock
from tests.fixtures.scorer import GRAPH_BASE, MALICIOUS, Answer, GraphRig, graph_reputation
from tibridge.common.contracts import Classification, Reputation, RuleSeverity
from tibridge.common.identity import StaticTokenCredential
from tibridge.scorer.reputation import (
    BearerTokenAuth,
    Found,
    GraphCounts,
    Refused,
    Retry,
    Unanswerable,
    batch_answers,
    item_answer,
    parse_reputation,
    reputation_path,
)


def test_a_graph_reputation_maps_to_the_contract() -> None:
    body = {
        "classification": "malicious",
        "score": 100,
        "rules": [{"name": "C2", "description": "seen", "severity": "high", "relatedDetailsUrl": "https://x.test"}],
    }
    reputation = parse_reputation(body)
    assert reputation is not None
    assert (reputation.score, reputation.classification) == (100, Classification.MALICIOUS)
    assert reputation.rules[0].severity is RuleSeverity.HIGH
    assert reputation.rules[0].related_details_url == "https://x.test"


def test_unknown_with_score_zero_and_no_rules_is_no_reputation() -> None:
    assert parse_reputation({"classification": "unknown", "score": 0, "rules": []}) is None
    kept = parse_reputation({"classification": "unknown", "score": 3, "rules": []})
    assert kept == Reputation(score=3, classification=Classification.UNKNOWN)


@pytest.mark.parametrize(
    "body", [[], {"classification": "evil", "score": 1}, {"classification": "unknown", "score": 101}]
)
def test_a_body_that_is_not_a_reputation_is_refused(body: Any) -> None:
    with pytest.raises(ValueError, match="reputation"):
        parse_reputation(body)


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (404, {}, Found(None)),
        (429, {"retry-after": "7"}, Retry("429", 7.0, throttled=True)),
        (500, {}, Retry("500")),
        (503, {"Retry-After": "2"}, Retry("503", 2.0)),
        (400, {}, Unanswerable(400, "bad host")),
    ],
)
def test_what_each_item_status_means(status: int, headers: dict[str, str], expected: object) -> None:
    assert item_answer(status, headers, {"error": {"code": "x", "message": "bad host"}}) == expected


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_item_says_which_permission_to_grant(status: int) -> None:
    answer = item_answer(status, {}, {})
    assert isinstance(answer, Refused)
    assert f"HTTP {status}" in answer.reason
    assert "ThreatIntelligence.Read.All" in answer.reason


def test_a_malformed_item_is_retried() -> None:
    assert isinstance(item_answer(200, {}, {"score": "lots"}), Retry)


def test_batch_answers_are_matched_by_id_whatever_their_order() -> None:
    response = httpx.Response(
        200,
        json={
            "responses": [
                {"id": "2", "status": 404, "body": {}},
                {"id": "1", "status": 200, "body": graph_reputation(MALICIOUS)},
            ]
        },
    )
    assert batch_answers(response, 3) == [Found(MALICIOUS), Found(None), Retry("batch item missing")]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_a_refused_batch_is_a_configuration_problem(status: int) -> None:
    answers = batch_answers(httpx.Response(status), 2)
    assert all(isinstance(answer, Refused) for answer in answers)


def test_a_malformed_batch_answer_is_retried() -> None:
    assert batch_answers(httpx.Response(200, content=b"{"), 1) == [Retry("malformed batch response")]


def test_hosts_are_path_quoted() -> None:
    assert reputation_path("2001:db8::1") == "/security/threatIntelligence/hosts/2001%3Adb8%3A%3A1/reputation"


async def test_one_batch_request_carries_every_host_and_counts_once(graph_rig: GraphRig) -> None:
    graph_rig.graph.reputations["evil.example"] = MALICIOUS
    answers = await graph_rig.client.lookup_batch(["evil.example", "2001:db8::1", "nothing.example"])
    assert answers == [Found(MALICIOUS), Found(None), Found(None)]
    assert graph_rig.graph.batches == [["evil.example", "2001:db8::1", "nothing.example"]]
    assert graph_rig.graph.authorizations == ["Bearer tibridge-sandbox-token"]
    assert graph_rig.client.metrics.counts() == GraphCounts(batch_requests=1, items=3, throttled=0, retries=0)


async def test_a_throttled_batch_is_retried_after_its_retry_after(graph_rig: GraphRig) -> None:
    graph_rig.graph.batch_script.append(Answer(429, retry_after="3"))
    answers = await graph_rig.client.lookup_batch(["a.example"])
    assert answers == [Found(None)]
    first, second = graph_rig.graph.sent_at
    assert second - first >= 3
    assert graph_rig.client.metrics.counts() == GraphCounts(batch_requests=2, items=2, throttled=1, retries=1)


async def test_a_batch_that_keeps_failing_gives_its_items_back_for_retry(graph_rig: GraphRig) -> None:
    graph_rig.graph.batch_script.extend(Answer(503) for _ in range(10))
    [answer] = await graph_rig.client.lookup_batch(["a.example"])
    assert isinstance(answer, Retry)
    assert len(graph_rig.graph.batches) == 4  # FAST_RETRIES.max_attempts


async def test_more_than_twenty_hosts_is_a_programming_error(graph_rig: GraphRig) -> None:
    with pytest.raises(ValueError, match="1 to 20"):
        await graph_rig.client.lookup_batch([f"h{n}.example" for n in range(21)])


class CountingCredential(StaticTokenCredential):
    def __init__(self, clock: ManualClock, lifetime: float) -> None:
        super().__init__()
        self.clock = clock
        self.lifetime = lifetime
        self.issued = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        assert scopes == ("https://graph.microsoft.com/.default",)
        self.issued += 1
        return AccessToken(f"token-{self.issued}", int(self.clock.now().timestamp() + self.lifetime))


async def test_the_token_is_reused_until_shortly_before_it_expires() -> None:
    clock = ManualClock()
    credential = CountingCredential(clock, lifetime=3600)
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(200)

    auth = BearerTokenAuth(credential, clock)
    async with httpx.AsyncClient(base_url=GRAPH_BASE, transport=httpx.MockTransport(answer), auth=auth) as http:
        await http.get("/a")
        await http.get("/b")
        clock.advance(3600 - 299)
        await http.get("/c")
    assert seen == ["Bearer token-1", "Bearer token-1", "Bearer token-2"]


async def test_a_401_is_retried_once_with_a_fresh_token() -> None:
    clock = ManualClock()
    credential = CountingCredential(clock, lifetime=3600)
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(401)

    auth = BearerTokenAuth(credential, clock)
    async with httpx.AsyncClient(base_url=GRAPH_BASE, transport=httpx.MockTransport(answer), auth=auth) as http:
        response = await http.get("/a")
    assert response.status_code == 401
    assert seen == ["Bearer token-1", "Bearer token-2"]
