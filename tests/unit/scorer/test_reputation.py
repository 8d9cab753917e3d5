"""The Graph reputation client: what each answer means, the $batch and single-GET wire shapes, the bearer token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken

from tests.fixtures.clock import ManualClock
from tests.fixtures.scorer import GRAPH_BASE, MALICIOUS, Answer, GraphRig, graph_reputation
from tibridge.common.contracts import Classification, Reputation, RuleSeverity
from tibridge.common.identity import StaticTokenCredential
from tibridge.common.pacing import Retry, Signal
from tibridge.sandbox.api_graph import REFUSALS
from tibridge.scorer.reputation import (
    BearerTokenAuth,
    Found,
    GraphReputationClient,
    Refused,
    Unanswerable,
    batch_answers,
    item_answer,
    parse_reputation,
    reputation_path,
    single_answer,
)
from tibridge.scorer.settings import LookupMode


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


def test_unknown_future_values_never_fail_a_lookup() -> None:
    body = {
        "classification": "unknownFutureValue",
        "score": 80,
        "rules": [
            {"name": "A", "severity": "unknownFutureValue"},
            {"name": "B", "severity": "critical"},  # a member added after this reader
            {"name": "C", "severity": None},
        ],
    }
    reputation = parse_reputation(body)
    assert reputation is not None
    assert reputation.classification is Classification.UNKNOWN_FUTURE_VALUE
    assert [rule.severity for rule in reputation.rules] == [
        RuleSeverity.UNKNOWN_FUTURE_VALUE,
        RuleSeverity.UNKNOWN_FUTURE_VALUE,
        RuleSeverity.UNKNOWN,
    ]
    newer = parse_reputation({"classification": "compromised", "score": 60})
    assert newer == Reputation(score=60, classification=Classification.UNKNOWN_FUTURE_VALUE)


@pytest.mark.parametrize(
    "body",
    [[], {"classification": 7, "score": 1}, {"score": 1}, {"classification": "unknown", "score": 101}],
)
def test_a_body_that_is_not_a_reputation_is_refused(body: Any) -> None:
    with pytest.raises(ValueError, match="reputation"):
        parse_reputation(body)


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (404, {}, Found(None)),
        (429, {"retry-after": "7"}, Retry("429", 7.0, Signal.THROTTLED, "bad host")),
        (500, {}, Retry("500", None, Signal.NEUTRAL, "bad host")),
        (503, {"Retry-After": "2"}, Retry("503", 2.0, Signal.OVERLOADED, "bad host")),
        (400, {}, Unanswerable(400, "bad host")),
    ],
)
def test_what_each_item_status_means(status: int, headers: dict[str, str], expected: object) -> None:
    assert item_answer(status, headers, {"error": {"code": "x", "message": "bad host"}}) == expected


@pytest.mark.parametrize(
    ("refusal", "fix"),
    [
        ("forbidden", "ThreatIntelligence.Read.All"),
        ("security_reader", "Security Reader role"),
        ("tenant_unverified", "blocked until Microsoft has verified it"),
    ],
)
def test_a_refusal_names_what_to_fix_in_graphs_own_words(refusal: str, fix: str) -> None:
    status, code, message = REFUSALS[refusal]
    answer = item_answer(status, {}, {"error": {"code": code, "message": message}})
    assert isinstance(answer, Refused)
    assert answer.reason.startswith("Microsoft Threat Intelligence (formerly MDTI) refused the lookups (HTTP 403")
    assert message in answer.reason
    assert fix in answer.reason
    assert "entitlement" not in answer.reason


def test_a_refused_token_points_at_the_credential() -> None:
    answer = item_answer(401, {}, {"error": {"code": "InvalidAuthenticationToken", "message": "Token expired."}})
    assert isinstance(answer, Refused)
    assert "HTTP 401" in answer.reason
    assert '"Token expired."' in answer.reason
    assert "TIBRIDGE_CREDENTIAL" in answer.reason


def test_a_malformed_item_is_retried() -> None:
    answer = item_answer(200, {}, {"score": "lots"})
    assert isinstance(answer, Retry)
    assert answer.cause == "malformed"


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
    response = httpx.Response(status, json={"error": {"code": "x", "message": "Graph says no"}})
    answers = batch_answers(response, 2)
    assert all(isinstance(answer, Refused) and "Graph says no" in answer.reason for answer in answers)


def test_a_malformed_batch_answer_is_retried() -> None:
    assert batch_answers(httpx.Response(200, content=b"{"), 1) == [Retry("malformed batch")]


def test_hosts_are_path_quoted() -> None:
    assert reputation_path("2001:db8::1") == "/security/threatIntelligence/hosts/2001%3Adb8%3A%3A1/reputation"


async def test_one_batch_request_carries_every_host_and_counts_once(graph_rig: GraphRig) -> None:
    graph_rig.graph.reputations["evil.example"] = MALICIOUS
    client = graph_rig.client()
    answers = await client.lookup(["evil.example", "2001:db8::1", "nothing.example"])
    assert answers == [Found(MALICIOUS), Found(None), Found(None)]
    assert graph_rig.graph.batches == [["evil.example", "2001:db8::1", "nothing.example"]]
    assert graph_rig.graph.authorizations == ["Bearer tibridge-sandbox-token"]
    assert (client.metrics.requests.total(kind="batch"), client.metrics.sizes.sum) == (1, 3)


async def test_a_throttled_batch_defers_every_host_once_and_counts_one_429(graph_rig: GraphRig) -> None:
    graph_rig.graph.batch_script.append(Answer(429, retry_after="3"))
    client = graph_rig.client()
    answers = await client.lookup(["a.example", "b.example"])
    assert answers == [Retry("batch 429", 3.0, Signal.THROTTLED, "scripted answer for batch")] * 2
    assert len(graph_rig.graph.batches) == 1  # the client never retries: the batcher does, per lookup
    assert client.metrics.throttled.total() == 1


async def test_throttled_items_count_one_429_each(graph_rig: GraphRig) -> None:
    graph_rig.graph.script("a.example", Answer(429, retry_after="1"))
    graph_rig.graph.script("b.example", Answer(429, retry_after="1"))
    client = graph_rig.client()
    await client.lookup(["a.example", "b.example", "c.example"])
    assert client.metrics.throttled.total() == 2


async def test_a_dropped_connection_is_an_overload_for_every_host() -> None:
    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("connection closed", request=request)

    async with httpx.AsyncClient(base_url=GRAPH_BASE, transport=httpx.MockTransport(drop)) as http:
        answers = await GraphReputationClient(http).lookup(["a.example", "b.example"])
    assert [(answer.cause, answer.signal) for answer in answers if isinstance(answer, Retry)] == [
        ("RemoteProtocolError", Signal.OVERLOADED)
    ] * 2


async def test_more_than_twenty_hosts_is_a_programming_error(graph_rig: GraphRig) -> None:
    with pytest.raises(ValueError, match="1 to 20"):
        await graph_rig.client().lookup([f"h{n}.example" for n in range(21)])


async def test_single_mode_sends_one_get_per_host(graph_rig: GraphRig) -> None:
    graph_rig.graph.reputations["evil.example"] = MALICIOUS
    client = graph_rig.client(LookupMode.SINGLE)
    assert await client.lookup(["evil.example"]) == [Found(MALICIOUS)]
    assert await client.lookup(["2001:db8::1"]) == [Found(None)]
    assert graph_rig.graph.batches == [["evil.example"], ["2001:db8::1"]]
    assert (client.metrics.requests.total(kind="single"), client.metrics.requests.total(kind="batch")) == (2, 0)
    with pytest.raises(ValueError, match="1 to 1"):
        await client.lookup(["a.example", "b.example"])


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(429, headers={"Retry-After": "2"}, json={"error": {"message": "slow"}}), Retry),
        (httpx.Response(403, json={"error": {"code": "Forbidden", "message": "no"}}), Refused),
        (httpx.Response(404, json={"error": {"code": "NotFound", "message": "never seen"}}), Found),
        (httpx.Response(404, text="<html>Not Found</html>"), Refused),  # not Graph: a wrong endpoint
        (httpx.Response(200, text="<html>"), Retry),
    ],
)
def test_what_a_single_get_answer_means(response: httpx.Response, expected: type) -> None:
    assert isinstance(single_answer(response), expected)


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
