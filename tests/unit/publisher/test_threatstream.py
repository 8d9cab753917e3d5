"""The ThreatStream client over httpx.MockTransport: auth, retries, how answers are read, the dry run (its pacing:
test_threatstream_pacing.py)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from tests.fixtures.clock import ManualClock
from tests.fixtures.publisher import PUBLISHING, observable, scored_indicator
from tests.fixtures.scorer import FAST_RETRIES
from tibridge.common.contracts import ObservableType
from tibridge.common.http import HTTP_TRANSIENT
from tibridge.common.pacing import Engine, PaceLimits, Pacer
from tibridge.publisher.mapping import Severity, intel_object
from tibridge.publisher.payloads import (
    Permission,
    SessionProfile,
    ThreatStreamRequest,
    deactivate_request,
    import_request,
    owned_search,
    upsert_request,
)
from tibridge.publisher.threatstream import DryRun, Outcome, ThreatStreamClient

API_KEY = "k3y-0f-the-analyst-5ecret"
BASE_URL = "https://threatstream.test/api"
NOW = datetime(2026, 11, 2, tzinfo=UTC)

Handler = Callable[[httpx.Request], httpx.Response]


def a_client(handler: Handler, clock: ManualClock, engine: Engine | None = None) -> ThreatStreamClient:
    """The client over a mock transport; unpaced unless an engine is given."""
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url=BASE_URL)
    unpaced = Pacer("threatstream", PaceLimits.fixed(math.inf), clock)
    engine = engine or Engine("threatstream", unpaced, FAST_RETRIES, clock, transient=HTTP_TRANSIENT)
    return ThreatStreamClient(http, "analyst", SecretStr(API_KEY), engine)


def an_import() -> ThreatStreamRequest:
    profile = SessionProfile(
        "malware", Severity.HIGH, 90, "amber", NOW, ("tibridge",), {"domain_mapping": "mal_domain"}
    )
    return import_request(["bad.example.com", "worse.example.com"], profile, PUBLISHING)


def an_upsert() -> ThreatStreamRequest:
    return upsert_request(
        [intel_object(scored_indicator(observable(ObservableType.IPV4)), PUBLISHING, NOW)], PUBLISHING
    )


def answering(*responses: httpx.Response) -> tuple[Handler, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return handler, seen


ACCEPTED = httpx.Response(202, json={"success": True, "import_session_id": "7", "job_id": "j"})


async def test_an_import_is_multipart_with_the_apikey_header_and_nothing_in_the_url() -> None:
    handler, seen = answering(ACCEPTED)
    answer = await a_client(handler, ManualClock()).send(an_import())
    assert answer.outcome is Outcome.ACCEPTED
    (request,) = seen
    assert (request.method, str(request.url)) == ("POST", f"{BASE_URL}/v2/intelligence/import/")
    assert request.headers["Authorization"] == f"apikey analyst:{API_KEY}"
    assert request.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    body = request.content.decode()
    assert 'name="datatext"\r\n\r\nbad.example.com\nworse.example.com\r\n' in body
    assert 'name="classification"\r\n\r\nprivate\r\n' in body
    assert API_KEY not in str(request.url)
    assert "filename" not in body


async def test_an_upsert_is_a_json_patch() -> None:
    handler, seen = answering(httpx.Response(202, json={"success": True}))
    answer = await a_client(handler, ManualClock()).send(an_upsert())
    assert answer.outcome is Outcome.ACCEPTED
    (request,) = seen
    assert (request.method, request.url.path) == ("PATCH", "/api/v2/intelligence/")
    assert json.loads(request.content)["meta"]["allow_update"] is True


async def test_a_429_is_retried_after_the_announced_wait() -> None:
    clock = ManualClock()
    handler, seen = answering(httpx.Response(429, headers={"Retry-After": "7"}), ACCEPTED)
    client = a_client(handler, clock)
    started = clock.monotonic()
    answer = await client.send(an_import())
    assert answer.outcome is Outcome.ACCEPTED
    assert len(seen) == 2
    assert clock.monotonic() - started >= 7
    assert (client.counts().requests, client.counts().retries) == (2, 1)


async def test_5xx_past_the_retry_budget_gives_the_work_back() -> None:
    handler, seen = answering(httpx.Response(503, json={"message": "down"}))
    client = a_client(handler, ManualClock())
    answer = await client.send(an_import())
    assert answer.outcome is Outcome.UNAVAILABLE
    assert len(seen) == FAST_RETRIES.max_attempts


async def test_timeouts_are_retried_then_give_the_work_back() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadTimeout("slow", request=request)

    answer = await a_client(handler, ManualClock()).send(an_upsert())
    assert answer.outcome is Outcome.UNAVAILABLE
    assert calls == FAST_RETRIES.max_attempts


CUT_SHORT = httpx.Response(202, content=b'{"success": true, "import_session_id": "7", "jo')


async def test_an_upsert_answered_cut_short_is_sent_again_and_stands_when_answered_whole() -> None:
    handler, seen = answering(CUT_SHORT, httpx.Response(202, json={"success": True}))
    answer = await a_client(handler, ManualClock()).send(an_upsert())
    assert answer.outcome is Outcome.ACCEPTED
    assert len(seen) == 2


async def test_an_import_answered_cut_short_is_not_sent_again_but_given_back() -> None:
    handler, seen = answering(CUT_SHORT, ACCEPTED)
    answer = await a_client(handler, ManualClock()).send(an_import())
    assert answer.outcome is Outcome.UNAVAILABLE  # sent again it would be a second session
    assert len(seen) == 1


async def test_an_upsert_cut_short_past_the_retry_budget_gives_the_work_back() -> None:
    handler, seen = answering(CUT_SHORT)
    answer = await a_client(handler, ManualClock()).send(an_upsert())
    assert answer.outcome is Outcome.UNAVAILABLE
    assert "not JSON" in answer.detail
    assert len(seen) == FAST_RETRIES.max_attempts


async def test_a_400_is_not_retried_and_its_message_is_kept_without_the_key() -> None:
    handler, seen = answering(httpx.Response(400, json={"message": f"objects[3]: bad value (key {API_KEY} was used)"}))
    answer = await a_client(handler, ManualClock()).send(an_upsert())
    assert answer.outcome is Outcome.REJECTED
    assert len(seen) == 1
    assert "objects[3]: bad value" in answer.detail
    assert API_KEY not in answer.detail


async def test_an_import_answered_without_success_is_rejected() -> None:
    handler, _ = answering(httpx.Response(200, json={"success": False, "message": "nothing to import"}))
    answer = await a_client(handler, ManualClock()).send(an_import())
    assert answer.outcome is Outcome.REJECTED
    assert "nothing to import" in answer.detail


@pytest.mark.parametrize(
    ("status", "sent", "hint"),
    [
        (401, an_import(), "TIBRIDGE_THREATSTREAM_API_KEY"),
        (404, an_upsert(), "TIBRIDGE_THREATSTREAM_BASE_URL"),
        (403, owned_search("tibridge", None), "denied reading intelligence"),
    ],
)
async def test_refusals_say_what_to_fix(status: int, sent: ThreatStreamRequest, hint: str) -> None:
    handler, seen = answering(httpx.Response(status, json={"message": "no"}))
    answer = await a_client(handler, ManualClock()).send(sent)
    assert answer.outcome is Outcome.REFUSED
    assert hint in answer.detail
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("sent", "permission", "hint"),
    [
        (an_import(), Permission.IMPORT, "importing intelligence"),
        (an_upsert(), Permission.APPROVE_INTEL, "TIBRIDGE_PUBLISHER_MODE=direct"),
        (deactivate_request(7), Permission.APPROVE_INTEL, "deactivating observables by id"),
    ],
)
async def test_a_missing_permission_names_it_and_what_needs_it(
    sent: ThreatStreamRequest, permission: Permission, hint: str
) -> None:
    """external-apis.md §3: a missing permission is a 403 with {"message": …} (the sandbox's text)."""
    message = "User sandbox lacks the 'Approve Intel' permission for this action."
    handler, _ = answering(httpx.Response(403, json={"message": message}))
    answer = await a_client(handler, ManualClock()).send(sent)
    assert (answer.outcome, answer.permission) == (Outcome.FORBIDDEN, permission)
    assert f"'{permission}'" in answer.detail
    assert hint in answer.detail


@pytest.mark.parametrize("status", [403, 404])
async def test_an_object_we_may_not_change_is_rejected_not_a_refusal(status: int) -> None:
    message = "Intelligence object 7 belongs to another organization; it cannot be edited."
    handler, _ = answering(httpx.Response(status, json={"message": message}))
    answer = await a_client(handler, ManualClock()).send(deactivate_request(7))
    assert (answer.outcome, answer.status) == (Outcome.REJECTED, status)


async def test_a_search_sends_its_filters_as_query_and_reads_the_page() -> None:
    page = {"meta": {"next": None}, "objects": [{"id": 1}]}
    handler, seen = answering(httpx.Response(200, json=page))
    answer = await a_client(handler, ManualClock()).send(owned_search("tibridge", 41))
    assert (answer.outcome, answer.body) == (Outcome.ACCEPTED, page)
    (request,) = seen
    assert request.method == "GET"
    assert dict(request.url.params) == {
        "tags.name": "tibridge",
        "order_by": "update_id",
        "limit": "1000",
        "update_id__gt": "41",
    }


async def test_the_key_reaches_no_log_line(caplog: pytest.LogCaptureFixture) -> None:
    handler, _ = answering(
        httpx.Response(500, text=f"trace: apikey analyst:{API_KEY}"),
        httpx.Response(401, json={"message": "bad key"}),
        httpx.Response(400, json={"message": API_KEY}),
    )
    client = a_client(handler, ManualClock())
    with caplog.at_level(logging.DEBUG):
        answers = [await client.send(an_import()) for _ in range(3)]
    assert [answer.outcome for answer in answers] == [Outcome.REFUSED, Outcome.REJECTED, Outcome.REJECTED]
    assert caplog.records, "the client should have logged its retry"
    assert not [record for record in caplog.records if API_KEY in record.getMessage()]
    assert all(API_KEY not in answer.detail for answer in answers)
    assert API_KEY not in repr(client.__dict__)


async def test_a_dry_run_writes_each_request_and_accepts_it(tmp_path: Path) -> None:
    target = tmp_path / "requests.jsonl"
    dry_run = DryRun(target)
    answers = [await dry_run.send(an_import()), await dry_run.send(an_upsert())]
    assert {answer.outcome for answer in answers} == {Outcome.ACCEPTED}
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert [(line["method"], line["path"]) for line in lines] == [
        ("POST", "/v2/intelligence/import/"),
        ("PATCH", "/v2/intelligence/"),
    ]
    assert lines[0]["body"]["datatext"] == "bad.example.com\nworse.example.com"
    assert lines[1]["body"]["meta"]["allow_update"] is True
    assert "Authorization" not in target.read_text()
    assert dry_run.counts().requests == 2


async def test_a_dry_run_holds_nothing_and_writes_no_reads(tmp_path: Path) -> None:
    target = tmp_path / "requests.jsonl"
    answer = await DryRun(target).send(owned_search("tibridge", None))
    assert (answer.outcome, answer.body["objects"]) == (Outcome.ACCEPTED, [])
    assert not target.exists()
