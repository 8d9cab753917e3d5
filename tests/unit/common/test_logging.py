"""Structured logs: JSON lines with trace ids and extras, and no secret in any of them."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import quote, quote_plus

import pytest
from opentelemetry.sdk.trace import TracerProvider
from pydantic import SecretStr

from tibridge.common import logging as structured_logging
from tibridge.common.logging import (
    REDACTED,
    redact,
    register_environment_secrets,
    register_secret,
    register_settings_secrets,
)
from tibridge.common.settings import ServiceSettings, load_settings

pytestmark = pytest.mark.usefixtures("restored_logging")


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> pytest.CaptureFixture[str]:
    """What `configure` writes to stderr (the handler writes to whatever sys.stderr is at the time)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_tibridge_handler", False)]:
        root.removeHandler(handler)
    structured_logging.configure("INFO")
    return capsys


def records(captured: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in captured.readouterr().err.splitlines()]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: apikey analyst@example.com:0123456789abcdef", "0123456789abcdef"),
        ("Authorization: Bearer eyJ0eXAiOiJKV1Qi.eyJhdWQiOi.c2lnbmF0dXJl", "eyJ0eXAiOiJKV1Qi"),
        ("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=app;SharedAccessKey=abc+/def=", "abc+/def="),
        ("DefaultEndpointsProtocol=https;AccountName=x;AccountKey=bXlrZXk=;EndpointSuffix=core", "bXlrZXk="),
        ("GET https://x.blob.core.windows.net/c?sv=2024&sig=s1gn4ture%3D&se=2026", "s1gn4ture%3D"),
        ("GET /api/v2/intelligence/?username=me&api_key=k3yk3y", "k3yk3y"),
    ],
    ids=["threatstream", "bearer", "servicebus-key", "storage-key", "sas-signature", "api-key-query"],
)
def test_credential_shapes_are_masked(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked
    assert REDACTED in masked


def test_ordinary_text_is_left_alone() -> None:
    text = "published 1000 indicators to ThreatStream in 2 requests (signature=ok, bearer of news)"
    assert redact(text) == text


def test_registered_secret_values_are_masked_wherever_they_appear() -> None:
    register_secret(SecretStr("plain-registered-value-42"))
    register_secret("ab")  # too short to mask without masking ordinary words
    assert redact("token plain-registered-value-42, about") == f"token {REDACTED}, about"


def test_a_secret_is_masked_url_encoded_and_in_base64_too() -> None:
    secret = "k3y+with/odd=chars"
    register_secret(secret)
    for form in (quote(secret, safe=""), quote_plus(secret), base64.b64encode(secret.encode()).decode()):
        assert redact(f"sent {form} along") == f"sent {REDACTED} along"


def test_the_keys_inside_a_connection_string_are_masked_on_their_own() -> None:
    service_bus_key, storage_key = "c2J-key-0f9e8d7c6b5a", "c3RvcmFnZS1rZXk-4a3b2c1d=="
    register_secret(SecretStr(f"Endpoint=sb://ns.example/;SharedAccessKeyName=Root;SharedAccessKey={service_bus_key}"))
    register_secret(f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={storage_key};")
    assert redact(f"hmac over {service_bus_key} and {storage_key}") == f"hmac over {REDACTED} and {REDACTED}"


def test_the_client_secret_azure_reads_from_the_environment_is_masked() -> None:
    register_environment_secrets({"AZURE_CLIENT_SECRET": "env-client-secret-77aa", "AZURE_CLIENT_ID": "not-a-secret"})
    assert redact("secret env-client-secret-77aa, id not-a-secret") == f"secret {REDACTED}, id not-a-secret"


def test_every_secret_of_the_settings_is_registered() -> None:
    settings = load_settings(
        ServiceSettings, bus="servicebus", servicebus_connection_string="Endpoint=sb://x/;Opaque=0paque-value-77"
    )
    register_settings_secrets(settings)
    assert "0paque-value-77" not in redact("connecting with Endpoint=sb://x/;Opaque=0paque-value-77")


def test_a_log_line_is_json_with_level_logger_message_and_extras(lines: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("tibridge.test").info("scored %d indicators", 20, extra={"verdicts": {"publish": 12}})
    [record] = records(lines)
    assert record["level"] == "INFO"
    assert record["logger"] == "tibridge.test"
    assert record["message"] == "scored 20 indicators"
    assert record["verdicts"] == {"publish": 12}
    assert isinstance(record["timestamp"], str)
    assert "trace_id" not in record


def test_a_log_line_inside_a_span_carries_its_trace(lines: pytest.CaptureFixture[str]) -> None:
    with TracerProvider().get_tracer("test").start_as_current_span("work") as span:
        logging.getLogger("tibridge.test").warning("inside")
    [record] = records(lines)
    context = span.get_span_context()
    assert record["trace_id"] == format(context.trace_id, "032x")
    assert record["span_id"] == format(context.span_id, "016x")


def test_secrets_are_masked_in_message_arguments_exceptions_and_extras(lines: pytest.CaptureFixture[str]) -> None:
    log = logging.getLogger("tibridge.test")
    log.error("calling with %s", "Bearer abc.def.ghi", extra={"header": "apikey me:k3y-in-extra"})
    try:
        raise RuntimeError("connection string SharedAccessKey=k3y-in-exception;")
    except RuntimeError:
        log.exception("failed")
    first, second = records(lines)
    for secret in ("abc.def.ghi", "k3y-in-extra", "k3y-in-exception"):
        assert secret not in json.dumps([first, second])
    assert first["message"] == f"calling with Bearer {REDACTED}"
    assert "RuntimeError" in str(second["exception"])


def test_a_bad_format_string_does_not_break_the_caller(lines: pytest.CaptureFixture[str]) -> None:
    logging.getLogger("tibridge.test").info("%d indicators", "many")
    [record] = records(lines)
    assert "arguments did not match" in str(record["message"])


def test_configuring_again_changes_the_level_without_a_second_handler(lines: pytest.CaptureFixture[str]) -> None:
    structured_logging.configure("WARNING")
    logging.getLogger("tibridge.test").info("hidden")
    logging.getLogger("tibridge.test").warning("shown")
    assert [record["message"] for record in records(lines)] == ["shown"]
