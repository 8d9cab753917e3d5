"""Scorer settings: defaults, the environment's forms, and clear errors."""

from __future__ import annotations

import pytest

from tibridge.common.contracts import Classification
from tibridge.common.settings import SettingsError, load_settings, setting_fields
from tibridge.scorer.app import batch_size_for, pace_limits
from tibridge.scorer.settings import GraphSettings, LookupMode, ScorerSettings, UnscorableHandling


@pytest.fixture(autouse=True)
def memory_bus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_BUS", "memory")


def test_defaults_follow_mdti_and_spend_the_quota_carefully() -> None:
    settings = load_settings(ScorerSettings)
    assert settings.graph.base_url == "https://graph.microsoft.com/v1.0"
    assert settings.scorer.threshold == 75
    assert settings.scorer.allowed_classifications == frozenset()
    assert settings.scorer.unscorable is UnscorableHandling.DROP
    assert settings.scorer.cache_ttl_seconds == 24 * 3600


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_SCORER_ALLOWED_CLASSIFICATIONS", " malicious, suspicious ")
    monkeypatch.setenv("TIBRIDGE_SCORER_UNSCORABLE", "forward")
    monkeypatch.setenv("TIBRIDGE_GRAPH_BASE_URL", "http://127.0.0.1:8123/graph/v1.0/")
    monkeypatch.setenv("TIBRIDGE_DEV_MODE", "true")
    settings = load_settings(ScorerSettings)
    assert settings.scorer.allowed_classifications == {Classification.MALICIOUS, Classification.SUSPICIOUS}
    assert settings.scorer.unscorable is UnscorableHandling.FORWARD
    assert settings.graph.base_url == "http://127.0.0.1:8123/graph/v1.0"


def test_an_unknown_classification_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_SCORER_ALLOWED_CLASSIFICATIONS", "evil")
    with pytest.raises(SettingsError) as error:
        load_settings(ScorerSettings)
    assert error.value.problems[0].startswith("TIBRIDGE_SCORER_ALLOWED_CLASSIFICATIONS:")


def test_plain_http_to_graph_is_refused_outside_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_GRAPH_BASE_URL", "http://graph.example/v1.0")
    with pytest.raises(SettingsError, match="TIBRIDGE_GRAPH_BASE_URL: plain http"):
        load_settings(ScorerSettings)


def test_every_setting_is_described() -> None:
    assert all(field.description for _, field in setting_fields(ScorerSettings))


def test_graph_is_paced_adaptively_unless_a_hard_cap_is_set() -> None:
    graph = load_settings(ScorerSettings).graph
    assert graph.lookup_mode is LookupMode.BATCH
    assert graph.max_lookups_per_second is None
    limits = pace_limits(graph)
    assert (limits.adaptive, limits.max_rate, limits.initial_rate) == (True, None, 500)
    capped = pace_limits(GraphSettings(max_lookups_per_second=30, max_parallel_requests=1))
    assert (capped.initial_rate, capped.max_rate, capped.initial_parallel, capped.max_parallel) == (30, 30, 1, 1)


def test_single_lookups_are_chosen_by_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_GRAPH_LOOKUP_MODE", "single")
    graph = load_settings(ScorerSettings).graph
    assert graph.lookup_mode is LookupMode.SINGLE
    assert batch_size_for(graph) == 1


@pytest.mark.parametrize(("cap", "size"), [(None, 20), (50, 20), (20, 20), (7.5, 7), (0.2, 1)])
def test_a_batch_never_holds_more_than_a_second_of_a_hard_cap(cap: float | None, size: int) -> None:
    assert batch_size_for(GraphSettings(max_lookups_per_second=cap)) == size
