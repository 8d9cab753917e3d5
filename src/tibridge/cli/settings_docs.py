"""The README's settings table, generated from the settings classes so it cannot drift."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tibridge.cli.pipeline import SERVICE_SETTINGS as _SERVICES
from tibridge.common.settings import ENV_PREFIX


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else "(computed)"
    value = field.default
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple | frozenset | set):
        return ", ".join(str(v) for v in value) or "—"
    return str(getattr(value, "value", value))


def _is_secret(field: FieldInfo) -> bool:
    annotation = str(field.annotation)
    return "SecretStr" in annotation or field.annotation is SecretStr


def settings_table() -> str:
    used_by: dict[str, list[str]] = {}
    fields: dict[str, FieldInfo] = {}
    for service, cls in _SERVICES.items():
        for name, field in cls.model_fields.items():
            env = ENV_PREFIX + name.upper()
            used_by.setdefault(env, []).append(service)
            fields.setdefault(env, field)
    lines = ["| Setting | Used by | Meaning | Default | Secret |", "|---|---|---|---|---|"]
    for env in sorted(fields, key=lambda e: (len(used_by[e]) < len(_SERVICES), e)):
        field = fields[env]
        services = "all" if len(used_by[env]) == len(_SERVICES) else ", ".join(used_by[env])
        meaning = (field.description or "").replace("|", "\\|")
        default = _default(field).replace("|", "\\|")
        lines.append(f"| `{env}` | {services} | {meaning} | `{default}` | {'yes' if _is_secret(field) else 'no'} |")
    return "\n".join(lines) + "\n"
