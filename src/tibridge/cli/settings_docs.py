"""The README's settings table, generated from the settings classes so it cannot drift."""

from __future__ import annotations

from datetime import timedelta

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tibridge.cli.registry import SERVICES
from tibridge.common.runtime import ServiceName
from tibridge.common.settings import setting_fields
from tibridge.common.topology import iso_duration

README_START = "<!-- settings:start -->"
README_END = "<!-- settings:end -->"


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        return "required" if field.default_factory is None else "(computed)"
    value = field.default
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, timedelta):
        # The form the settings accept (ISO 8601), not Python's repr.
        return f"P{value.days}D" if value.days and not value.seconds else iso_duration(value)
    if isinstance(value, list | tuple | frozenset | set):
        return ", ".join(str(v) for v in value) or "—"
    return str(getattr(value, "value", value))


def _is_secret(field: FieldInfo) -> bool:
    annotation = str(field.annotation)
    return "SecretStr" in annotation or field.annotation is SecretStr


def _the_default(env: str, fields: dict[ServiceName, FieldInfo]) -> str:
    """The setting's one default: services that share a setting share its section, so they cannot differ."""
    defaults = {_default(field) for field in fields.values()}
    if len(defaults) > 1:
        raise ValueError(f"{env} has a different default in each of {', '.join(fields)}; give it one")
    return f"`{defaults.pop()}`"


def settings_table() -> str:
    fields: dict[str, dict[ServiceName, FieldInfo]] = {}
    for service, spec in SERVICES.items():
        for env, field in setting_fields(spec.settings):
            fields.setdefault(env, {})[service] = field
    lines = ["| Setting | Used by | Meaning | Default | Secret |", "|---|---|---|---|---|"]
    for env in sorted(fields, key=lambda e: (len(fields[e]) < len(SERVICES), ", ".join(fields[e]), e)):
        per_service = fields[env]
        field = next(iter(per_service.values()))
        services = "all" if len(per_service) == len(SERVICES) else ", ".join(per_service)
        meaning = (field.description or "").replace("|", "\\|")
        default = _the_default(env, per_service).replace("|", "\\|")
        lines.append(f"| `{env}` | {services} | {meaning} | {default} | {'yes' if _is_secret(field) else 'no'} |")
    return "\n".join(lines) + "\n"


def readme_with_table(readme: str) -> str:
    """The README text with the generated table between its settings markers."""
    head, start, rest = readme.partition(README_START)
    _, end, tail = rest.partition(README_END)
    if not start or not end:
        raise ValueError(f"README.md lacks the {README_START} … {README_END} markers")
    return f"{head}{start}\n{settings_table()}{end}{tail}"
