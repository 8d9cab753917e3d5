"""`tibridge config check` and bad settings anywhere: one clear line per problem, exit 2, no traceback."""

import pytest
from typer.testing import CliRunner

from tibridge.cli.main import app

SANDBOX_LIKE = {
    "TIBRIDGE_BUS": "memory",
    "TIBRIDGE_DEV_MODE": "true",
    "TIBRIDGE_CREDENTIAL": "sandbox",
    "TIBRIDGE_LOGANALYTICS_ENDPOINT": "http://127.0.0.1:8642/loganalytics",
    "TIBRIDGE_LOGANALYTICS_WORKSPACE_ID": "5a4db0c5-0000-4000-8000-000000000001",
    "TIBRIDGE_GRAPH_BASE_URL": "http://127.0.0.1:8642/graph/v1.0",
    "TIBRIDGE_THREATSTREAM_BASE_URL": "http://127.0.0.1:8642/threatstream/api",
    "TIBRIDGE_THREATSTREAM_USERNAME": "sandbox",
    "TIBRIDGE_THREATSTREAM_API_KEY": "sandbox-api-key",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    import os

    for name in list(os.environ):
        if name.startswith("TIBRIDGE_"):
            monkeypatch.delenv(name)
    for name, value in SANDBOX_LIKE.items():
        monkeypatch.setenv(name, value)
    return SANDBOX_LIKE


def test_good_settings_pass(env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert "collector: settings OK" in result.output


def test_each_bad_setting_is_one_line_naming_it(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_SCORER_THRESHOLD", "high")
    monkeypatch.delenv("TIBRIDGE_LOGANALYTICS_WORKSPACE_ID")
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert any(line.startswith("collector: error: TIBRIDGE_LOGANALYTICS_WORKSPACE_ID") for line in lines), lines
    assert any(line.startswith("scorer: error: TIBRIDGE_SCORER_THRESHOLD") for line in lines), lines
    assert "Traceback" not in result.output


def test_a_variable_no_service_reads_is_named(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_SCORE_THRESHOLD", "80")  # the scorer's threshold is TIBRIDGE_SCORER_THRESHOLD
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 2
    assert "environment: error: TIBRIDGE_SCORE_THRESHOLD is not a setting of any service" in result.output
    assert "scorer: settings OK" in result.output


def test_remote_plain_http_is_refused(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_GRAPH_BASE_URL", "http://graph.example.com/v1.0")
    result = CliRunner().invoke(app, ["config", "check", "scorer"])
    assert result.exit_code == 2
    assert "TIBRIDGE_GRAPH_BASE_URL" in result.output


def test_a_command_with_bad_settings_exits_2_without_a_traceback(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIBRIDGE_PUBLISHER_MODE", "sideways")
    result = CliRunner().invoke(app, ["publisher"])
    assert result.exit_code == 2
    assert "TIBRIDGE_PUBLISHER_MODE" in result.output
    assert "Traceback" not in result.output


def test_secret_values_never_echo_in_errors(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIBRIDGE_SERVICEBUS_CONNECTION_STRING", "Endpoint=sb://x/;SharedAccessKey=TOPSECRET")
    monkeypatch.setenv("TIBRIDGE_BUS", "servicebus")
    monkeypatch.setenv("TIBRIDGE_HEALTH_PORT", "TOPSECRET")
    result = CliRunner().invoke(app, ["config", "check"])
    assert "TOPSECRET" not in result.output
