"""Structured logs: JSON lines on stderr with the active trace, and never a secret.

`configure(level)` installs one handler on the root logger. Every record passing it goes through
`RedactingFilter`, which masks the secret values registered at startup (`register_secret`,
`register_settings_secrets`, `register_environment_secrets`; also URL-encoded and in base64) and anything
shaped like a credential (ThreatStream `apikey user:key`, `Bearer` tokens, Service Bus / storage keys, SAS
signatures); the JSON formatter masks once more what it adds itself (formatted exceptions, extra fields).
"""

from __future__ import annotations

import base64
import logging
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any, Final, TextIO
from urllib.parse import quote, quote_plus

from opentelemetry import trace
from pydantic import BaseModel, SecretStr
from pythonjsonlogger.json import JsonFormatter

REDACTED: Final = "[REDACTED]"
# Shorter registered values would mask ordinary words all over the logs.
_MIN_SECRET_LENGTH = 4

# Each pattern keeps its `keep` group (the label) and masks what follows it.
_CREDENTIAL_PATTERNS: Final = (
    re.compile(r"(?P<keep>\bapikey\s+)[^\s:\"']+:[^\s\"',;]+", re.IGNORECASE),
    re.compile(r"(?P<keep>\bbearer\s+)[A-Za-z0-9\-._~+/]{8,}=*", re.IGNORECASE),
    re.compile(r"(?P<keep>\b(?:SharedAccessKey|AccountKey)\s*=\s*)[^;\s\"']+", re.IGNORECASE),
    re.compile(r"(?P<keep>\b(?:sig|api_key|client_secret)=)[^&;\s\"']+", re.IGNORECASE),
)

# Parts of Service Bus and storage connection strings that are keys.
_CONNECTION_STRING_KEYS = frozenset({"sharedaccesskey", "accountkey", "sharedaccesssignature"})
_ENVIRONMENT_SECRETS = ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PASSWORD", "AZURE_PASSWORD")

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_HANDLER_MARK = "_tibridge_handler"
# The Azure SDKs narrate every connection at INFO; they speak from WARNING on unless we debug.
_CHATTY_LOGGER = "azure"


def register_secret(value: str | SecretStr | None) -> None:
    """Masks this value wherever it appears in a log record from now on — also URL-encoded or in base64, and, for
    a connection string, each key inside it on its own (an SDK may log the key without its label)."""
    plain = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not plain or len(plain) < _MIN_SECRET_LENGTH:
        return
    forms = {plain, quote(plain, safe=""), quote_plus(plain), base64.b64encode(plain.encode()).decode()}
    with _secrets_lock:
        _secrets.update(form for form in forms if len(form) >= _MIN_SECRET_LENGTH)
    for key in _connection_string_keys(plain):
        if key != plain:
            register_secret(key)


def register_environment_secrets(environ: Mapping[str, str]) -> None:
    """Registers the secrets Azure's libraries read from the environment themselves (DefaultAzureCredential's
    client secret and certificate password), which no setting of ours carries."""
    for name in _ENVIRONMENT_SECRETS:
        register_secret(environ.get(name))


def _connection_string_keys(text: str) -> list[str]:
    keys = []
    for part in text.split(";"):
        name, separator, value = part.partition("=")
        if separator and value and name.strip().lower() in _CONNECTION_STRING_KEYS:
            keys.append(value.strip())
    return keys


def register_settings_secrets(settings: BaseModel) -> None:
    """Registers every `SecretStr` value of a settings object (nested models included)."""
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            register_secret(value)
        elif isinstance(value, BaseModel):
            register_settings_secrets(value)


def redact(text: str) -> str:
    with _secrets_lock:
        # Longest first, so a secret that contains another is masked whole.
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, REDACTED)
    for pattern in _CREDENTIAL_PATTERNS:
        text = pattern.sub(rf"\g<keep>{REDACTED}", text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _redact_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Replaces the record's message (with its args merged in) and exception text by redacted copies."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the caller's logging call
            message = f"{record.msg!r} (arguments did not match the format)"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class TraceContextFilter(logging.Filter):
    """Adds `trace_id` and `span_id` of the active span, so logs and traces join up."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


class RedactingJsonFormatter(JsonFormatter):
    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        redacted: dict[str, Any] = _redact_value(log_data)
        return redacted


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever `sys.stderr` is when a record comes (test runners and daemonisers swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def json_formatter() -> logging.Formatter:
    return RedactingJsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
        timestamp=True,
    )


def configure(level: str) -> None:
    """JSON lines on stderr at `level` (DEBUG, INFO, WARNING, ERROR); calling it again only changes the level."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
    root = logging.getLogger()
    if not any(getattr(handler, _HANDLER_MARK, False) for handler in root.handlers):
        handler = _StderrHandler()
        handler.addFilter(RedactingFilter())
        handler.addFilter(TraceContextFilter())
        handler.setFormatter(json_formatter())
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    root.setLevel(numeric)
    logging.getLogger(_CHATTY_LOGGER).setLevel(
        logging.NOTSET if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    )
