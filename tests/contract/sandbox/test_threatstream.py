"""The ThreatStream stand-in over HTTP (external-apis.md §3): what it takes, what it refuses, and what it proves."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.fixtures.sandbox import THREATSTREAM_HEADERS, ManualClock, SandboxFactory
from tibridge.sandbox import SandboxServer
from tibridge.sandbox.intel import classify
from tibridge.sandbox.vocabulary import VALUE_FIELDS

SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@contextlib.asynccontextmanager
async def client_of(server: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=server.endpoints.threatstream + "/", headers=THREATSTREAM_HEADERS, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def threatstream(sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(sandbox) as client:
        yield client


async def import_text(client: httpx.AsyncClient, datatext: str, **fields: str) -> str:
    form = {"datatext": datatext, "classification": "private", "confidence": "90", **fields}
    # A file part forces multipart/form-data, as real clients send it.
    response = await client.post("v2/intelligence/import/", data=form, files={"file": ("", b"")})
    assert response.status_code == 202, response.text
    assert response.json()["success"] is True
    return str(response.json()["import_session_id"])


async def search(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    response = await client.get("v2/intelligence/", params={"limit": "1000", **params})
    assert response.status_code == 200, response.text
    return list(response.json()["objects"])


async def ours(client: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    return [obj for obj in await search(client, **params) if obj["source"] == "sandbox"]


async def test_an_import_is_processing_then_done_then_approving_then_approved(sandbox_factory: SandboxFactory) -> None:
    """§3: imports are asynchronous; only the final state says what was accepted (numIndicators/numRejected)."""
    clock = ManualClock()
    async with sandbox_factory(clock=clock, indicators=0) as server, client_of(server) as client:
        session_id = await import_text(
            client,
            f"203.0.113.9\nevil.example.com\nhttps://evil.example.com/x\n{SHA256}\n2001:db8::9\nnot-a-thing!",
            ip_mapping="c2_ip",
            ipv6_mapping="suspicious_ipv6",
        )
        assert (await client.get(f"v1/importsession/{session_id}/")).json()["status"] == "processing"
        clock.advance(1)
        done = (await client.get(f"v1/importsession/{session_id}/")).json()
        assert (done["status"], done["numIndicators"], done["numRejected"]) == ("done", 5, 1)
        assert await ours(client) == []
        assert server.stats()["threatstream"]["pending_approval"] == 5
        approving = await client.patch(f"v1/importsession/{session_id}/approve_all/")
        assert approving.json()["status"] == "approving"
        clock.advance(1)
        assert (await client.get(f"v1/importsession/{session_id}/")).json()["status"] == "approved"
        held = {obj["value"]: obj for obj in await ours(client, status="active")}
        # ip_mapping applies to IPv6 as its _ipv6 form; ipv6_mapping is documented nowhere and not honoured.
        assert {value: obj["itype"] for value, obj in held.items()} == {
            "203.0.113.9": "c2_ip",
            "2001:db8::9": "c2_ipv6",
            "evil.example.com": "mal_domain",
            "https://evil.example.com/x": "mal_url",
            SHA256: "mal_md5",
        }
        assert (held["2001:db8::9"]["type"], held[SHA256]["subtype"]) == ("ipv6", "SHA256")
        landed = await search(client, import_session_id=session_id)
        assert len(landed) == 5  # how a client learns which observables a session created
        details = (await client.get(urljoin(server.base_url, f"/_sandbox/threatstream/sessions/{session_id}"))).json()
        assert details["rejected"] == [{"value": "not-a-thing!", "reason": "not_an_observable"}]
        assert details["ignored_form_fields"] == ["ipv6_mapping"]


async def test_whitelisted_values_are_rejected_and_a_client_can_learn_why(sandbox_factory: SandboxFactory) -> None:
    clock = ManualClock()
    settings: dict[str, Any] = {"clock": clock, "indicators": 0, "threatstream_whitelist": ("good.example",)}
    async with sandbox_factory(**settings) as server, client_of(server) as client:
        session_id = await import_text(client, "good.example bad.example", default_state="active")
        clock.advance(1)
        session = (await client.get(f"v1/importsession/{session_id}/")).json()
        assert (session["status"], session["numIndicators"], session["numRejected"]) == ("approved", 1, 1)
        whitelist = (await client.get("v1/orgwhitelist/")).json()["objects"]
        assert [entry["value"] for entry in whitelist] == ["good.example"]
        response = await client.patch(
            "v2/intelligence/", json={"objects": [{"domain": "good.example", "itype": "mal_domain"}]}
        )
        assert response.status_code == 202
        assert server.stats()["threatstream"]["ignored_reasons"] == {"whitelisted": 1}


async def test_direct_upsert_takes_what_is_valid_and_leaves_out_the_rest(
    threatstream: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    """§3: a 2xx means the JSON was valid; objects with a bad itype or bad data are ignored (and counted here)."""
    body = {
        "meta": {"classification": "private", "confidence": 80, "allow_update": True},
        "objects": [
            {"srcip": "203.0.113.9", "itype": "anon_proxy"},
            {"ipv6": "2001:db8::7", "itype": "mal_ipv6"},
            {"md5": SHA256, "itype": "mal_md5", "subtype": "SHA256"},
            {"md5": SHA256, "itype": "suspicious_md5", "subtype": "SHA256"},
            {"srcip": "2001:db8::8", "itype": "mal_ip"},
            {"domain": "evil.example.com"},
            {"domain": "evil.example.com", "itype": "mal_domain", "status": "inactive"},
            {"url": "https://evil.example.com/", "itype": "mal_url", "tlp": "white"},
        ],
    }
    response = await threatstream.patch("v2/intelligence/", json=body)
    assert response.status_code == 202
    assert sorted(obj["value"] for obj in await ours(threatstream)) == sorted(["203.0.113.9", "2001:db8::7", SHA256])
    stats = sandbox.stats()["threatstream"]
    assert stats["ignored_reasons"] == {
        "missing_itype": 1,
        "status_not_honoured": 1,
        "tlp_not_in_vocabulary": 1,
        "unknown_itype": 1,
        "value_does_not_fit": 1,
    }
    again = await threatstream.patch("v2/intelligence/", json={**body, "meta": {"allow_update": False}})
    assert again.status_code == 202
    assert sandbox.stats()["threatstream"]["duplicates_created"] == 3


async def test_the_tlp_vocabulary_is_a_setting_and_the_other_spelling_is_refused(
    sandbox_factory: SandboxFactory,
) -> None:
    objects = [
        {"srcip": "203.0.113.1", "itype": "mal_ip", "tlp": "white"},
        {"srcip": "203.0.113.2", "itype": "mal_ip", "tlp": "green"},
    ]
    async with sandbox_factory(indicators=0, threatstream_tlp="tlp1") as server, client_of(server) as client:
        assert (await client.patch("v2/intelligence/", json={"objects": objects})).status_code == 202
        assert len(await ours(client)) == 2
        clear = [{"srcip": "203.0.113.3", "itype": "mal_ip", "tlp": "clear"}]
        assert (await client.patch("v2/intelligence/", json={"objects": clear})).status_code == 202
        assert server.stats()["threatstream"]["ignored_reasons"] == {"tlp_not_in_vocabulary": 1}
    async with (
        sandbox_factory(indicators=0, threatstream_tlp_refusal="request") as server,
        client_of(server) as client,
    ):
        refused = await client.patch("v2/intelligence/", json={"objects": objects})
        assert refused.status_code == 400
        assert "'white' is not one of clear, green, amber, amber+strict, red" in refused.json()["message"]
        assert await ours(client) == []


async def test_undocumented_expiry_writes_are_not_honoured(threatstream: httpx.AsyncClient) -> None:
    """§3: a bulk PATCH keyed by value with `status`, and a re-import with a past expiration_ts, are undocumented."""
    await threatstream.patch("v2/intelligence/", json={"objects": [{"srcip": "203.0.113.9", "itype": "mal_ip"}]})
    bulk = await threatstream.patch(
        "v2/intelligence/",
        json={
            "meta": {"allow_update": True},
            "objects": [{"srcip": "203.0.113.9", "itype": "mal_ip", "status": "inactive"}],
        },
    )
    assert bulk.status_code == 202
    assert [obj["status"] for obj in await ours(threatstream, value="203.0.113.9")] == ["active"]
    past = await threatstream.post(
        "v2/intelligence/import/",
        data={"datatext": "203.0.113.9", "expiration_ts": "2020-01-01T00:00:00Z"},
        files={"file": ("", b"")},
    )
    assert past.status_code == 400
    assert "PATCH /api/v2/intelligence/{id}/" in past.json()["message"]


async def test_one_value_has_several_foreign_entries_and_only_ours_may_be_changed(sandbox: SandboxServer) -> None:
    """§3: one value can have several entries (private, public, other itypes, other sources); change by id."""
    async with client_of(sandbox) as client:
        foreign = (await client.get(urljoin(sandbox.base_url, "/_sandbox/threatstream/objects?include=foreign"))).json()
        by_value: dict[str, list[dict[str, Any]]] = {}
        for obj in foreign["objects"]:
            by_value.setdefault(obj["value"], []).append(obj)
        value, entries = max(by_value.items(), key=lambda item: len(item[1]))
        assert len(entries) >= 2
        found = await search(client, value=value)
        assert {obj["id"] for obj in found} == {obj["id"] for obj in entries}
        for obj in found:
            assert {"id", "value", "type", "subtype", "itype", "status", "confidence", "meta", "is_public", "tlp",
                    "tags", "expiration_ts", "update_id", "resource_uri"} <= obj.keys()  # fmt: skip
            assert obj["resource_uri"] == f"/api/v2/intelligence/{obj['id']}/"
        public = next((obj for obj in foreign["objects"] if obj["is_public"]), None)
        assert public is not None
        denied = await client.patch(f"v2/intelligence/{public['id']}/", json={"status": "inactive"})
        assert denied.status_code == 403
        assert "another organization" in denied.json()["message"]
        assert sandbox.stats()["threatstream"]["foreign"]["changed"] == []
        editable = next(obj for obj in foreign["objects"] if obj["is_editable"])
        changed = await client.patch(f"v2/intelligence/{editable['id']}/", json={"status": "falsepos"})
        assert changed.status_code == 200
        assert changed.json()["update_id"] > editable["update_id"]
        assert sandbox.stats()["threatstream"]["foreign"]["changed"] == [editable["id"]]
        reconciled = (await client.get(urljoin(sandbox.base_url, "/_sandbox/reconcile"))).json()
        assert any("foreign" in problem for problem in reconciled["problems"])


async def test_find_then_patch_by_id_expires_our_observable(threatstream: httpx.AsyncClient) -> None:
    await threatstream.patch(
        "v2/intelligence/", json={"objects": [{"domain": "evil.example.com", "itype": "mal_domain"}]}
    )
    (obj,) = await ours(threatstream, value="evil.example.com")
    response = await threatstream.patch(obj["resource_uri"].removeprefix("/api/"), json={"status": "inactive"})
    assert response.status_code == 200
    assert (await ours(threatstream, value="evil.example.com"))[0]["status"] == "inactive"
    changed = await search(threatstream, update_id__gt=str(obj["update_id"]), order_by="update_id")
    assert [o["id"] for o in changed] == [obj["id"]]
    unknown = await threatstream.patch(obj["resource_uri"].removeprefix("/api/"), json={"value": "other.example"})
    assert unknown.status_code == 400
    assert (await threatstream.patch("v2/intelligence/999999/", json={"status": "inactive"})).status_code == 404


@pytest.mark.parametrize(
    ("permissions", "method", "path", "kwargs", "needed"),
    [
        (["import", "approve_import"], "PATCH", "v2/intelligence/", {"json": {"objects": []}}, "Approve Intel"),
        (
            ["import", "approve_import"],
            "PATCH",
            "v2/intelligence/1/",
            {"json": {"status": "inactive"}},
            "Approve Intel",
        ),
        (["import", "approve_intel"], "PATCH", "v1/importsession/1/approve_all/", {}, "Approve Import"),
        (
            ["import", "approve_intel"],
            "POST",
            "v2/intelligence/import/",
            {"data": {"datatext": "203.0.113.9", "default_state": "active"}, "files": {"file": ("", b"")}},
            "Approve Import",
        ),
        (
            ["approve_intel"],
            "POST",
            "v2/intelligence/import/",
            {"data": {"datatext": "203.0.113.9"}, "files": {"file": ("", b"")}},
            "Import Intelligence",
        ),
    ],
)
async def test_a_key_without_a_permission_gets_403_naming_it(
    sandbox_factory: SandboxFactory,
    permissions: list[str],
    method: str,
    path: str,
    kwargs: dict[str, Any],
    needed: str,
) -> None:
    async with (
        sandbox_factory(indicators=0, threatstream_permissions=permissions) as server,
        client_of(server) as client,
    ):
        response = await client.request(method, path, **kwargs)
    assert response.status_code == 403
    assert needed in response.json()["message"]


async def test_more_objects_than_allowed_are_400(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(max_objects_per_request=3, indicators=0) as server, client_of(server) as client:
        objects = [{"srcip": f"203.0.113.{i}", "itype": "mal_ip"} for i in range(4)]
        response = await client.patch("v2/intelligence/", json={"meta": {}, "objects": objects})
    assert response.status_code == 400
    assert "at most 3" in response.json()["message"]


@pytest.mark.parametrize(
    ("headers", "params", "status"),
    [
        ({}, {}, 401),
        ({"Authorization": "apikey sandbox:wrong-key"}, {}, 401),
        ({"Authorization": "Bearer sandbox-api-key"}, {}, 401),
        (THREATSTREAM_HEADERS, {"username": "sandbox", "api_key": "sandbox-api-key"}, 400),
        (THREATSTREAM_HEADERS, {"api_key": "sandbox-api-key"}, 400),
    ],
)
async def test_auth_failures(
    sandbox: SandboxServer, headers: dict[str, str], params: dict[str, str], status: int
) -> None:
    async with httpx.AsyncClient(base_url=sandbox.endpoints.threatstream + "/", headers=headers) as client:
        response = await client.get("v2/intelligence/", params=params)
    assert response.status_code == status
    assert "Authorization: apikey" in response.json()["message"]


async def test_search_pages_through_meta_next_at_most_1000_a_page(
    threatstream: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    objects = [{"srcip": f"203.0.113.{i}", "itype": "mal_ip"} for i in range(25)]
    await threatstream.patch("v2/intelligence/", json={"meta": {"allow_update": True}, "objects": objects})
    seen: list[str] = []
    url: str | None = "v2/intelligence/?limit=10&status=active&source=sandbox"
    while url:
        page = (await threatstream.get(urljoin(sandbox.endpoints.threatstream + "/", url))).json()
        assert len(page["objects"]) <= 10
        seen += [obj["value"] for obj in page["objects"]]
        url = page["meta"]["next"]
    assert sorted(seen) == sorted(obj["srcip"] for obj in objects)
    capped = (await threatstream.get("v2/intelligence/", params={"limit": 5000})).json()["meta"]
    assert capped["limit"] == 1000
    refused = await threatstream.get("v2/intelligence/", params={"q": "value=203.0.113.1"})
    assert refused.status_code == 400


async def test_an_unknown_session_is_404(threatstream: httpx.AsyncClient) -> None:
    assert (await threatstream.get("v1/importsession/999/")).status_code == 404
    assert (await threatstream.patch("v1/importsession/999/approve_all/")).status_code == 404


async def test_a_per_request_ceiling_answers_429_with_retry_after(sandbox_factory: SandboxFactory) -> None:
    """§3: rate limits are not published; the ceiling (requests/s) is the `rate_ceiling` fault."""
    faults = {"threatstream": {"rate_ceiling": 2, "burst": 2}}
    async with sandbox_factory(indicators=0, faults=faults) as server, client_of(server) as client:
        statuses = [(await client.get("v2/intelligence/")).status_code for _ in range(4)]
        limited = await client.get("v2/intelligence/")
    assert statuses[:2] == [200, 200]
    assert 429 in statuses[2:]
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert "message" in limited.json()


async def test_reconcile_judges_ours_against_the_expected_outcome(sandbox_factory: SandboxFactory) -> None:
    async with (
        sandbox_factory(indicators=150, threatstream_processing_seconds=0) as server,
        client_of(server) as client,
    ):
        expected = server.expected()
        assert expected.active
        report = (await client.get(urljoin(server.base_url, "/_sandbox/reconcile"))).json()
        assert not report["ok"]
        assert "missing" in report["problems"][0]
        keys = {kind: key for key, kind in VALUE_FIELDS.items()}
        objects = []
        for value in sorted(expected.active):
            kind = classify(value)
            assert kind is not None
            obj: dict[str, Any] = {keys[kind]: value, "itype": expected.itypes[value]}
            if value in expected.subtypes:
                obj["subtype"] = expected.subtypes[value]
            objects.append(obj)
        assert (
            await client.patch("v2/intelligence/", json={"meta": {"allow_update": True}, "objects": objects})
        ).status_code == 202
        assert (await client.get(urljoin(server.base_url, "/_sandbox/reconcile"))).json() == {
            "ok": True,
            "problems": [],
        }
        stray = sorted(expected.not_active)[0]
        await client.post(
            "v2/intelligence/import/", data={"datatext": stray, "default_state": "active"}, files={"file": ("", b"")}
        )
        problems = (await client.get(urljoin(server.base_url, "/_sandbox/reconcile"))).json()["problems"]
        assert any("should not be active" in problem for problem in problems)
