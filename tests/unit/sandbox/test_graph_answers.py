"""Graph answers per lookup (`api_graph.resolve`) and the sandbox settings that shape them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tibridge.common.clock import SystemClock
from tibridge.sandbox.api_graph import REFUSALS, resolve
from tibridge.sandbox.config import SandboxConfig, parse_settings
from tibridge.sandbox.reputation import HostReputation, HostRule
from tibridge.sandbox.state import SandboxState

ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)
URL = "/security/threatIntelligence/hosts/evil.example/reputation"
FUTURE = HostReputation(88, "unknownFutureValue", (HostRule("New rule", "", "unknownFutureValue"),))


def state(**settings: Any) -> SandboxState:
    config = SandboxConfig(indicators=0, anchor=ANCHOR, reputations={"evil.example": FUTURE}, **settings)
    return SandboxState(config, SystemClock())


def test_unknown_future_values_are_served_as_they_are() -> None:
    answer = resolve(state(), "GET", URL)
    assert answer.status == 200
    assert (answer.body["classification"], answer.body["rules"][0]["severity"]) == ("unknownFutureValue",) * 2


@pytest.mark.parametrize("refusal", sorted(REFUSALS))
def test_every_refusal_answers_graphs_error_shape_for_every_host(refusal: str) -> None:
    status, code, message = REFUSALS[refusal]
    sandbox = state(graph_refusal=refusal)
    for url in (URL, "/security/threatIntelligence/hosts('198.51.100.1')/reputation"):
        answer = resolve(sandbox, "GET", url)
        assert (answer.status, answer.body["error"]["code"], answer.body["error"]["message"]) == (status, code, message)
    assert sandbox.stats.graph.lookups == 0


def test_graph_forbidden_stays_the_older_spelling_of_the_forbidden_refusal() -> None:
    assert SandboxConfig.model_validate({"graph_forbidden": True}).graph_refusal == "forbidden"
    assert SandboxConfig.model_validate({"graph_forbidden": False}).graph_refusal is None


def test_set_flags_become_settings_json_or_text() -> None:
    settings = parse_settings(
        ["threatstream_tlp=tlp1", 'threatstream_permissions=["import"]', "loganalytics_max_concurrent=null"]
    )
    assert settings == {
        "threatstream_tlp": "tlp1",
        "threatstream_permissions": ["import"],
        "loganalytics_max_concurrent": None,
    }
    assert SandboxConfig(**settings).threatstream_permissions == {"import"}
    with pytest.raises(ValueError, match="SETTING=VALUE"):
        parse_settings(["no_such_setting=1"])
