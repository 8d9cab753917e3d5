"""The compose files as compose reads them: docker-compose.yml, merged with an override such as
docker-compose.ci.yml, into the services that would start.

Only the part of the compose format the project's files use is understood, and anything else is refused
rather than guessed: mappings merge key by key, `!reset` empties a key, other values are replaced, and two
files that both give a list (ports, volumes) are an error, since compose merges those by rules not modelled.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
CI_OVERRIDE = REPO / "docker-compose.ci.yml"
# Lists an override may give again: compose replaces these whole.
_REPLACED_LISTS = frozenset({"command", "entrypoint", "profiles", "tmpfs"})
_DEFAULTED = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):-(?P<default>[^}]*)\}")


@dataclass(frozen=True)
class Reset:
    """`!reset VALUE`: the override's value replaces the key, whatever the files before it said."""

    value: Any


class _ComposeLoader(yaml.SafeLoader):
    pass


def _reset(loader: yaml.SafeLoader, node: yaml.Node) -> Reset:
    if isinstance(node, yaml.MappingNode):
        return Reset(loader.construct_mapping(node))
    if isinstance(node, yaml.SequenceNode):
        return Reset(loader.construct_sequence(node))
    return Reset(loader.construct_scalar(node))  # type: ignore[arg-type]


_ComposeLoader.add_constructor("!reset", _reset)


def load_file(path: Path) -> dict[str, Any]:
    loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_ComposeLoader)  # noqa: S506 - SafeLoader + !reset
    assert isinstance(loaded, dict), f"{path.name} is not a compose file"
    return loaded


def merge(base: Any, override: Any, where: str = "") -> Any:
    if isinstance(override, Reset):
        return override.value
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value, f"{where}.{key}") if key in base else _unreset(value)
        return merged
    if isinstance(base, list) and isinstance(override, list) and where.rsplit(".", 1)[-1] not in _REPLACED_LISTS:
        raise ValueError(f"both files give the list {where.lstrip('.')}; compose's merge of it is not modelled here")
    return _unreset(override)


def _unreset(value: Any) -> Any:
    if isinstance(value, Reset):
        return value.value
    if isinstance(value, Mapping):
        return {key: _unreset(item) for key, item in value.items()}
    return value


def interpolate(value: str) -> str:
    """What compose makes of `${NAME:-default}` with NAME unset (no file relies on the caller's environment)."""
    return _DEFAULTED.sub(lambda match: match["default"], value)


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines, `#` comments; values are taken literally (no quotes), as `docker run --env-file` does."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            name, separator, value = line.partition("=")
            assert separator, f"{path.name}:{number}: {line!r} is not NAME=value"
            assert not value.startswith(("'", '"')), f"{path.name}:{number}: no quotes (docker --env-file keeps them)"
            values[name.strip()] = value
    return values


@dataclass(frozen=True)
class Volume:
    source: str  # a path (bind mount) or a named volume
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith((".", "/"))


@dataclass(frozen=True)
class Service:
    name: str
    image: str
    command: tuple[str, ...]
    environment: Mapping[str, str]
    depends_on: Mapping[str, str]  # service -> condition
    network_mode: str | None
    volumes: tuple[Volume, ...]
    read_only: bool
    tmpfs: tuple[str, ...]
    healthcheck_test: tuple[str, ...] | None
    build: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Project:
    name: str
    services: Mapping[str, Service]
    directory: Path

    def start_order(self) -> list[str]:
        """Every service after what it depends on (compose's order)."""
        ordered: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            assert name not in path, f"depends_on cycle: {' -> '.join((*path, name))}"
            if name in ordered:
                return
            for dependency in self.services[name].depends_on:
                visit(dependency, (*path, name))
            ordered.append(name)

        for name in self.services:
            visit(name, ())
        return ordered


def _service(name: str, raw: Mapping[str, Any], directory: Path) -> Service:
    environment: dict[str, str] = {}
    env_files = raw.get("env_file", [])
    for env_file in [env_files] if isinstance(env_files, str) else env_files:
        environment.update(read_env_file(directory / env_file))
    declared = raw.get("environment", {})
    assert isinstance(declared, Mapping), f"{name}: write `environment` as a mapping"
    environment.update({key: interpolate(str(value)) for key, value in declared.items()})
    depends_on = raw.get("depends_on", {})
    if isinstance(depends_on, list):
        depends_on = {dependency: {"condition": "service_started"} for dependency in depends_on}
    volumes = []
    for spec in raw.get("volumes", []):
        source, target, *options = str(spec).split(":")
        volumes.append(Volume(source, target, "ro" in options))
    test = raw.get("healthcheck", {}).get("test")
    tmpfs = raw.get("tmpfs", [])
    return Service(
        name=name,
        image=str(raw["image"]),
        command=tuple(str(word) for word in raw.get("command", [])),
        environment=environment,
        depends_on={key: str(value.get("condition", "service_started")) for key, value in depends_on.items()},
        network_mode=raw.get("network_mode"),
        volumes=tuple(volumes),
        read_only=bool(raw.get("read_only", False)),
        tmpfs=tuple([tmpfs] if isinstance(tmpfs, str) else tmpfs),
        healthcheck_test=tuple(test) if test else None,
        build=dict(raw.get("build", {})),
    )


def project(files: Sequence[Path] = (COMPOSE_FILE,), profiles: Sequence[str] = ()) -> Project:
    """The services `docker compose -f FILE... up` starts (those in no profile, or an enabled one)."""
    merged: dict[str, Any] = {}
    for path in files:
        merged = merge(merged, load_file(path))
    directory = files[0].parent
    services = {
        name: _service(name, raw, directory)
        for name, raw in merged["services"].items()
        if not raw.get("profiles") or set(raw["profiles"]) & set(profiles)
    }
    for service in services.values():
        missing = set(service.depends_on) - set(services)
        assert not missing, f"{service.name} depends on {sorted(missing)}, which would not start"
    return Project(str(merged.get("name", directory.name)), services, directory)


@functools.cache
def user_project() -> Project:
    """`docker compose up`: the official emulator."""
    return project((COMPOSE_FILE,))


@functools.cache
def ci_project() -> Project:
    """`docker compose -f docker-compose.yml -f docker-compose.ci.yml up`: the Service Bus double instead."""
    return project((COMPOSE_FILE, CI_OVERRIDE))
