"""Settings: every one an environment variable, secrets as SecretStr, validated at start.

One naming rule for every service: `TIBRIDGE_<SECTION>_<FIELD>`. A section is a nested model named after
what it configures — an API client's connection and limits (`TIBRIDGE_LOGANALYTICS_*`, `TIBRIDGE_GRAPH_*`,
`TIBRIDGE_THREATSTREAM_*`, the watermark store's `TIBRIDGE_CHECKPOINT_*`, the bus's `TIBRIDGE_SERVICEBUS_*`,
the probes' `TIBRIDGE_HEALTH_*`) or a service's behaviour (`TIBRIDGE_COLLECTOR_*`, `TIBRIDGE_SCORER_*`,
`TIBRIDGE_PUBLISHER_*`). What the whole process shares has no section (`TIBRIDGE_BUS`, `TIBRIDGE_LOG_LEVEL`,
…). A section's model is the one place its defaults and descriptions are written; the code it configures takes
the model as it is, and the README's table is generated from it.

Each service has one class deriving from `ServiceSettings`. `load_settings` takes values by setting name (the
variable's name without `TIBRIDGE_`, in lower case, e.g. `graph_base_url`) and turns validation errors into one
clear line per bad setting, naming the environment variable to fix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from tibridge.common.identity import CredentialMode
from tibridge.common.urls import check_endpoint

ENV_PREFIX = "TIBRIDGE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_SEPARATOR = "_"


class BusKind(StrEnum):
    MEMORY = "memory"
    SERVICEBUS = "servicebus"


class Section(BaseModel):
    """A group of settings sharing the prefix TIBRIDGE_<field name of the section>_; unknown names are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class TibridgeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_SEPARATOR,
        # Only the first separator after the section's name nests: TIBRIDGE_GRAPH_BASE_URL is graph.base_url.
        env_nested_max_split=1,
        extra="ignore",
        validate_default=True,
    )

    dev_mode: bool = Field(False, description="Allows plain http to loopback endpoints (the local sandbox).")
    credential: CredentialMode = Field(
        CredentialMode.DEFAULT,
        description="`default` (DefaultAzureCredential: workload/managed identity, client secret) or `sandbox`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _every_section_present(cls, values: Any) -> Any:
        """A section the environment says nothing about is validated as empty, so each field it requires is named."""
        if isinstance(values, dict):
            for name, field in cls.model_fields.items():
                if _section_of(field) is not None:
                    values.setdefault(name, {})
        return values

    def endpoint(self, setting: str, url: str) -> str:
        """`url` checked against the endpoint rules; a ValueError naming TIBRIDGE_<setting> otherwise."""
        try:
            return check_endpoint(url, dev_mode=self.dev_mode)
        except ValueError as error:
            raise ValueError(f"{ENV_PREFIX}{setting}: {error}") from None


class ServiceBusSettings(Section):
    connection_string: SecretStr | None = Field(
        None, description="Service Bus (or emulator) connection string; or set TIBRIDGE_SERVICEBUS_NAMESPACE."
    )
    namespace: str | None = Field(
        None, description="Fully-qualified namespace (x.servicebus.windows.net), used with DefaultAzureCredential."
    )
    prefetch: int = Field(20, ge=0, le=1000, description="Messages buffered per receiver.")


class HealthSettings(Section):
    port: int = Field(8080, ge=0, le=65535, description="Port of /healthz, /readyz and /metrics (0 = off).")
    metrics: bool = Field(
        True,
        description="Serve the process's metrics in Prometheus' text format at /metrics on the health port.",
    )
    host: str = Field(
        # Kubelet probes and Prometheus reach the pod IP; the endpoints reveal ready/not ready and counts by
        # category, never an indicator value or a secret.
        "0.0.0.0",  # noqa: S104
        description="Address /healthz, /readyz and /metrics listen on: 0.0.0.0 for container probes and scrapes, "
        "127.0.0.1 on a shared host.",
    )

    @field_validator("host")
    @classmethod
    def _is_ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address such as 0.0.0.0 or 127.0.0.1") from None
        return value


class ServiceSettings(TibridgeSettings):
    """What every service process needs besides its own settings: the bus, health probes, logging, shutdown."""

    bus: BusKind = Field(BusKind.SERVICEBUS, description="`servicebus`, or `memory` for all services in one process.")
    servicebus: ServiceBusSettings
    health: HealthSettings
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    shutdown_grace_seconds: float = Field(
        20.0,
        ge=0,
        description="Time in-flight work gets to finish on SIGTERM; give the orchestrator's kill deadline 10 s more.",
    )
    handler_timeout_seconds: float = Field(
        120.0,
        gt=0,
        description="Most time handling one message may take, not counting waits on a dependency (rate limits, "
        "Retry-After, API answers, the bus); past it the message is dead-lettered as ProcessingTimeout.",
    )
    once_refused_seconds: float = Field(
        300.0,
        gt=0,
        description="`--once` runs: how long a dependency may keep refusing us (401/403, a paused consumer) before "
        "the run stops with exit code 3, leaving what it did not deliver for the next run.",
    )

    @field_validator("log_level")
    @classmethod
    def _is_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
        return level

    @model_validator(mode="after")
    def _bus_is_reachable(self) -> Self:
        if self.bus is BusKind.SERVICEBUS and not (self.servicebus.connection_string or self.servicebus.namespace):
            raise ValueError(
                "set TIBRIDGE_SERVICEBUS_CONNECTION_STRING or TIBRIDGE_SERVICEBUS_NAMESPACE (or TIBRIDGE_BUS=memory)"
            )
        return self


S = TypeVar("S", bound=TibridgeSettings)


def setting_fields(cls: type[BaseModel]) -> Iterator[tuple[str, FieldInfo]]:
    """Every setting of `cls` as (environment variable, field), the sections' fields in their place."""
    for name, field in cls.model_fields.items():
        section = _section_of(field)
        if section is None:
            yield ENV_PREFIX + name.upper(), field
            continue
        for inner, inner_field in section.model_fields.items():
            yield f"{ENV_PREFIX}{name.upper()}{_SEPARATOR}{inner.upper()}", inner_field


def from_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The values a `TIBRIDGE_*` environment holds, by setting name, for `load_settings` (others are left out)."""
    return {name.removeprefix(ENV_PREFIX).lower(): value for name, value in env.items() if name.startswith(ENV_PREFIX)}


class SettingsError(Exception):
    """Settings failed validation; `problems` holds one line per setting to fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def load_settings(cls: type[S], **values: Any) -> S:
    """`cls` from the environment, with `values` (by setting name, e.g. `graph_base_url=…`) taking precedence."""
    try:
        return cls(**_nested(cls, values))
    except ValidationError as error:
        raise SettingsError([_describe(cls, item) for item in error.errors(include_input=False)]) from None


def _section_of(field: FieldInfo) -> type[Section] | None:
    annotation = field.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, Section) else None


def _nested(cls: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """Setting names (`graph_base_url`) as the model's shape (`{"graph": {"base_url": …}}`)."""
    sections = {name for name, field in cls.model_fields.items() if _section_of(field) is not None}
    shaped: dict[str, Any] = {}
    for key, value in values.items():
        section, _, inner = key.partition(_SEPARATOR)
        if key not in cls.model_fields and section in sections and inner:
            shaped.setdefault(section, {})[inner] = value
        else:
            shaped[key] = value
    return shaped


def _describe(cls: type[BaseModel], item: Any) -> str:
    location = [str(part) for part in item.get("loc", ())]
    message = str(item.get("msg", "is invalid")).removeprefix("Value error, ")
    unknown = item.get("type") == "extra_forbidden"
    names: list[str] = []
    field: FieldInfo | None = None
    model: type[BaseModel] | None = cls
    for part in location:
        if model is None:
            break
        if part in model.model_fields:
            field = model.model_fields[part]
            model = _section_of(field)
        elif unknown:
            field, model = None, None
        else:
            break
        names.append(part)
    if not names or model is not None:
        # The whole model or a whole section: its validators' messages name the variables themselves.
        return message[0].upper() + message[1:] + ("" if message.endswith(".") else ".")
    env = ENV_PREFIX + _SEPARATOR.join(names).upper()
    if unknown:
        return f"{env}: is not a setting; `tibridge config docs` lists them."
    hint = f" — {field.description}" if field is not None and field.description else "."
    return f"{env}: {message}{hint}"
