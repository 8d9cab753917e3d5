"""The ThreatStream stand-in: both import paths, created vs updated, auth, search paging."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.fixtures.sandbox import THREATSTREAM_HEADERS, SandboxFactory
from tibridge.sandbox import SandboxServer


@pytest.fixture
async def threatstream(sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=sandbox.endpoints.threatstream + "/", headers=THREATSTREAM_HEADERS, timeout=10
    ) as client:
        yield client


async def import_text(client: httpx.AsyncClient, datatext: str, **fields: str) -> str:
    form = {"datatext": datatext, "classification": "private", "confidence": "90", **fields}
    # A file part forces multipart/form-data, as real clients send it.
    response = await client.post("v2/intelligence/import/", data=form, files={"file": ("", b"")})
    assert response.status_code == 202, response.text
    assert response.json()["success"] is True
    return str(response.json()["import_session_id"])


async def active_values(client: httpx.AsyncClient) -> set[str]:
    response = await client.get("v2/intelligence/", params={"status": "active", "limit": 1000})
    return {obj["value"] for obj in response.json()["objects"]}


async def test_an_import_waits_for_approval_and_a_reimport_updates(
    threatstream: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    session_id = await import_text(
        threatstream, "203.0.113.9\nevil.example.com\nhttps://evil.example.com/x\n" + "d" * 32, ip_mapping="c2_ip"
    )
    session = (await threatstream.get(f"v1/importsession/{session_id}/")).json()
    assert (session["status"], session["numIndicators"], session["numRejected"]) == ("done", 4, 0)
    assert await active_values(threatstream) == set()
    assert sandbox.stats()["threatstream"]["pending_approval"] == 4

    approved = await threatstream.patch(f"v1/importsession/{session_id}/approve_all/")
    assert approved.json()["status"] == "approved"
    assert await active_values(threatstream) == {
        "203.0.113.9",
        "evil.example.com",
        "https://evil.example.com/x",
        "d" * 32,
    }

    await import_text(threatstream, "203.0.113.9 new.example.com", ip_mapping="c2_ip", default_state="active")
    stats = sandbox.stats()["threatstream"]
    assert {k: stats[k] for k in ("objects", "active", "created", "updated", "duplicates_created")} == {
        "objects": 5,
        "active": 5,
        "created": 5,
        "updated": 1,
        "duplicates_created": 0,
    }
    assert (stats["import_sessions"], stats["pending_approval"], stats["batch_sizes"]) == (2, 0, {"2": 1, "4": 1})


async def test_direct_upsert_counts_created_updated_and_duplicates(
    threatstream: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    def body(allow_update: bool, status: str = "active") -> dict[str, Any]:
        return {
            "meta": {"classification": "private", "confidence": 80, "allow_update": allow_update},
            "objects": [
                {"srcip": "203.0.113.9", "itype": "mal_ip", "status": status},
                {"domain": "evil.example.com", "itype": "c2_domain", "severity": "high"},
            ],
        }

    assert (await threatstream.patch("v2/intelligence/", json=body(True))).status_code == 202
    assert (await threatstream.patch("v2/intelligence/", json=body(True, status="inactive"))).status_code == 202
    assert await active_values(threatstream) == {"evil.example.com"}
    await threatstream.patch("v2/intelligence/", json=body(False))
    stats = sandbox.stats()["threatstream"]
    assert (stats["created"], stats["updated"], stats["duplicates_created"], stats["objects"]) == (4, 2, 2, 4)
    held = (await threatstream.get(urljoin(sandbox.base_url, "/_sandbox/threatstream/objects"))).json()["objects"]
    assert sorted(obj["value"] for obj in held) == [
        "203.0.113.9",
        "203.0.113.9",
        "evil.example.com",
        "evil.example.com",
    ]


async def test_a_missing_itype_is_400_naming_the_object(threatstream: httpx.AsyncClient) -> None:
    response = await threatstream.patch(
        "v2/intelligence/",
        json={
            "meta": {"allow_update": True},
            "objects": [{"srcip": "203.0.113.9", "itype": "mal_ip"}, {"srcip": "1.1.1.1"}],
        },
    )
    assert response.status_code == 400
    assert "objects[1]" in response.json()["message"]
    assert await active_values(threatstream) == set()


async def test_more_objects_than_allowed_are_400(sandbox_factory: SandboxFactory) -> None:
    async with (
        sandbox_factory(max_objects_per_request=3) as server,
        httpx.AsyncClient(base_url=server.endpoints.threatstream + "/", headers=THREATSTREAM_HEADERS) as client,
    ):
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


async def test_search_pages_through_meta_next(threatstream: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    objects = [{"srcip": f"203.0.113.{i}", "itype": "mal_ip"} for i in range(25)]
    await threatstream.patch("v2/intelligence/", json={"meta": {"allow_update": True}, "objects": objects})
    seen: list[str] = []
    url: str | None = "v2/intelligence/?limit=10&status=active"
    while url:
        page = (await threatstream.get(urljoin(sandbox.endpoints.threatstream + "/", url))).json()
        seen += [obj["value"] for obj in page["objects"]]
        url = page["meta"]["next"]
    assert sorted(seen) == sorted(obj["srcip"] for obj in objects)
    by_value = (await threatstream.get("v2/intelligence/", params={"value": "203.0.113.7"})).json()
    assert [obj["value"] for obj in by_value["objects"]] == ["203.0.113.7"]


async def test_an_unknown_session_is_404(threatstream: httpx.AsyncClient) -> None:
    assert (await threatstream.get("v1/importsession/999/")).status_code == 404
    assert (await threatstream.patch("v1/importsession/999/approve_all/")).status_code == 404
