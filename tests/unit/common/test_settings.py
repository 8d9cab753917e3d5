"""Settings: one line per bad setting, naming the variable to fix, and never a secret value."""

from __future__ import annotations

import pytest
from pydantic import Field, SecretStr

from tibridge.common.settings import BusKind, ServiceSettings, SettingsError, load_settings, setting_fields

CONNECTION_STRING = "Endpoint=sb://tibridge.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey=k3y-s3cr3t="


class ExampleSettings(ServiceSettings):
    threatstream_api_key: SecretStr = Field(min_length=20, description="ThreatStream API key.")


def problems_of(cls: type[ServiceSettings], **overrides: object) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(cls, **overrides)
    return caught.value.problems


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TIBRIDGE_BUS", "TIBRIDGE_SERVICEBUS_CONNECTION_STRING", "TIBRIDGE_SERVICEBUS_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)


def test_settings_come_from_tibridge_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_SERVICEBUS_CONNECTION_STRING", CONNECTION_STRING)
    monkeypatch.setenv("TIBRIDGE_HEALTH_PORT", "9000")
    monkeypatch.setenv("TIBRIDGE_HEALTH_HOST", "127.0.0.1")
    monkeypatch.setenv("TIBRIDGE_LOG_LEVEL", "debug")
    settings = load_settings(ServiceSettings)
    assert settings.bus is BusKind.SERVICEBUS
    assert (settings.health.port, settings.health.host, settings.log_level) == (9000, "127.0.0.1", "DEBUG")
    assert settings.servicebus.connection_string is not None
    assert CONNECTION_STRING not in repr(settings)


def test_values_by_setting_name_take_precedence_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_HEALTH_PORT", "9000")
    monkeypatch.setenv("TIBRIDGE_HEALTH_HOST", "127.0.0.1")
    settings = load_settings(ServiceSettings, bus="memory", health_port=9100, servicebus_prefetch=5)
    assert (settings.health.port, settings.health.host, settings.servicebus.prefetch) == (9100, "127.0.0.1", 5)


def test_every_setting_has_one_variable_named_after_its_section() -> None:
    names = [env for env, _ in setting_fields(ServiceSettings)]
    assert "TIBRIDGE_SERVICEBUS_CONNECTION_STRING" in names
    assert "TIBRIDGE_HEALTH_PORT" in names
    assert "TIBRIDGE_LOG_LEVEL" in names
    assert len(names) == len(set(names))


def test_a_misspelt_setting_in_a_section_is_named_not_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_BUS", "memory")
    monkeypatch.setenv("TIBRIDGE_HEALTH_PROT", "9000")
    assert problems_of(ServiceSettings) == [
        "TIBRIDGE_HEALTH_PROT: is not a setting; `tibridge config docs` lists them."
    ]


def test_each_bad_setting_is_one_line_naming_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_BUS", "memory")
    monkeypatch.setenv("TIBRIDGE_HEALTH_PORT", "70000")
    monkeypatch.setenv("TIBRIDGE_SERVICEBUS_PREFETCH", "lots")
    monkeypatch.setenv("TIBRIDGE_HEALTH_HOST", "pod.local")
    monkeypatch.setenv("TIBRIDGE_LOG_LEVEL", "chatty")
    problems = problems_of(ServiceSettings)
    assert len(problems) == 4
    named = sorted(problem.split(":", 1)[0] for problem in problems)
    assert named == [
        "TIBRIDGE_HEALTH_HOST",
        "TIBRIDGE_HEALTH_PORT",
        "TIBRIDGE_LOG_LEVEL",
        "TIBRIDGE_SERVICEBUS_PREFETCH",
    ]
    assert all("\n" not in problem for problem in problems)


def test_a_bus_without_an_address_says_what_to_set() -> None:
    [problem] = problems_of(ServiceSettings)
    assert "TIBRIDGE_SERVICEBUS_CONNECTION_STRING" in problem
    assert "TIBRIDGE_SERVICEBUS_NAMESPACE" in problem


def test_no_secret_value_appears_in_the_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_SERVICEBUS_CONNECTION_STRING", CONNECTION_STRING)
    monkeypatch.setenv("TIBRIDGE_THREATSTREAM_API_KEY", "short-s3cret")
    monkeypatch.setenv("TIBRIDGE_SHUTDOWN_GRACE_SECONDS", "-1")
    problems = problems_of(ExampleSettings)
    assert any(problem.startswith("TIBRIDGE_THREATSTREAM_API_KEY:") for problem in problems)
    text = str(SettingsError(problems))
    assert "short-s3cret" not in text
    assert "k3y-s3cr3t" not in text
