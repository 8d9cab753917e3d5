"""Settings: pydantic-settings, prefix TIBRIDGE_, secrets as SecretStr, validated at start.

Each service has one class deriving from `ServiceSettings`; `load_settings` turns validation errors into
one clear line per bad setting, naming the environment variable to fix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Self, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tibridge.common.identity import CredentialMode
from tibridge.common.urls import check_endpoint

ENV_PREFIX = "TIBRIDGE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class BusKind(StrEnum):
    MEMORY = "memory"
    SERVICEBUS = "servicebus"


class TibridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    dev_mode: bool = Field(False, description="Allows plain http to loopback endpoints (the local sandbox).")
    credential: CredentialMode = Field(
        CredentialMode.DEFAULT,
        description="`default` (DefaultAzureCredential: workload/managed identity, client secret) or `sandbox`.",
    )

    def endpoint(self, url: str) -> str:
        return check_endpoint(url, dev_mode=self.dev_mode)


class ServiceSettings(TibridgeSettings):
    """What every service process needs besides its own settings: the bus, health port, logging."""

    bus: BusKind = Field(BusKind.SERVICEBUS, description="`servicebus`, or `memory` for all services in one process.")
    servicebus_connection_string: SecretStr | None = Field(
        None, description="Service Bus (or emulator) connection string; or set TIBRIDGE_SERVICEBUS_NAMESPACE."
    )
    servicebus_namespace: str | None = Field(
        None, description="Fully-qualified namespace (x.servicebus.windows.net), used with DefaultAzureCredential."
    )
    servicebus_prefetch: int = Field(20, ge=0, le=1000, description="Messages buffered per receiver.")
    health_port: int = Field(8080, ge=0, le=65535, description="Port of /healthz and /readyz (0 = off).")
    health_host: str = Field(
        "0.0.0.0",  # noqa: S104 - kubelet probes reach the pod IP; the endpoints reveal only ready/not ready
        description="Address /healthz and /readyz listen on: 0.0.0.0 for container probes, 127.0.0.1 on a shared host.",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    max_in_flight: int = Field(64, ge=1, le=10000, description="Unsettled messages a consumer holds at most.")
    shutdown_grace_seconds: float = Field(
        20.0,
        ge=0,
        description="Time in-flight work gets to finish on SIGTERM; give the orchestrator's kill deadline 10 s more.",
    )

    @field_validator("health_host")
    @classmethod
    def _is_ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address such as 0.0.0.0 or 127.0.0.1") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _is_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
        return level

    @model_validator(mode="after")
    def _bus_is_reachable(self) -> Self:
        if self.bus is BusKind.SERVICEBUS and not (self.servicebus_connection_string or self.servicebus_namespace):
            raise ValueError(
                "set TIBRIDGE_SERVICEBUS_CONNECTION_STRING or TIBRIDGE_SERVICEBUS_NAMESPACE (or TIBRIDGE_BUS=memory)"
            )
        return self


S = TypeVar("S", bound=TibridgeSettings)


def from_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The settings-field values a `TIBRIDGE_*` environment holds, as keyword arguments for `load_settings`
    (other variables are left out)."""
    return {name.removeprefix(ENV_PREFIX).lower(): value for name, value in env.items() if name.startswith(ENV_PREFIX)}


class SettingsError(Exception):
    """Settings failed validation; `problems` holds one line per setting to fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def load_settings(cls: type[S], **overrides: Any) -> S:
    try:
        return cls(**overrides)
    except ValidationError as error:
        raise SettingsError([_describe(cls, item) for item in error.errors(include_input=False)]) from None


def _describe(cls: type[TibridgeSettings], item: Any) -> str:
    location = [str(part) for part in item.get("loc", ())]
    message = str(item.get("msg", "is invalid")).removeprefix("Value error, ")
    if not location:
        return message[0].upper() + message[1:] + "."
    name = location[0]
    env = ENV_PREFIX + name.upper()
    field = cls.model_fields.get(name)
    hint = f" — {field.description}" if field is not None and field.description else "."
    return f"{env}: {message}{hint}"
