"""Readers for the deployment files (Dockerfiles, the compose files, k8s/, deploy/azure) and the settings they
must match."""

from __future__ import annotations

import functools
import json
import shlex
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from tests.container.compose import read_env_file, user_project
from tibridge.collector.settings import CollectorSettings
from tibridge.common.settings import ServiceSettings, setting_fields
from tibridge.publisher.settings import PublisherSettings
from tibridge.scorer.settings import ScorerSettings

REPO = Path(__file__).resolve().parents[3]
K8S = REPO / "k8s" / "base"
K8S_LOCAL = REPO / "k8s" / "local"
COMPOSE_FILE = REPO / "docker-compose.yml"
AZURE_TEMPLATE = REPO / "deploy" / "azure" / "main.json"

SETTINGS: dict[str, type[ServiceSettings]] = {
    "collector": CollectorSettings,
    "scorer": ScorerSettings,
    "publisher": PublisherSettings,
}
SERVICES = tuple(SETTINGS)
IMAGES = (*SERVICES, "sandbox", "sbdouble")
_DOCKERFILE_DIRECTORIES = {"sandbox": "sandbox", "sbdouble": "tests/sbdouble"}


def dockerfile_path(image: str) -> Path:
    return REPO / _DOCKERFILE_DIRECTORIES.get(image, f"services/{image}") / "Dockerfile"


def all_env_names() -> set[str]:
    """Every TIBRIDGE_* variable some service reads, from the settings classes themselves."""
    return set().union(*(env_names(settings) for settings in SETTINGS.values()))


def env_names(settings: type[ServiceSettings]) -> set[str]:
    return {env for env, _ in setting_fields(settings)}


def secret_env_names(settings: type[ServiceSettings]) -> set[str]:
    """Environment names of the settings that hold secrets (SecretStr, optional or not)."""
    return {env for env, field in setting_fields(settings) if _is_secret(field.annotation)}


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_secret(arg) for arg in typing.get_args(annotation))
    return False


# --- Dockerfiles ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction (ENTRYPOINT, CMD, HEALTHCHECK ... CMD [...])."""
        start = self.arguments.index("[")
        parsed = json.loads(self.arguments[start:])
        assert isinstance(parsed, list)
        return [str(item) for item in parsed]

    def words(self) -> list[str]:
        return shlex.split(self.arguments)


@functools.cache
def dockerfile(image: str) -> tuple[Instruction, ...]:
    """The instructions of an image's Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in dockerfile_path(image).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return tuple(instructions)


def only(instructions: tuple[Instruction, ...], keyword: str) -> list[Instruction]:
    return [instruction for instruction in instructions if instruction.keyword == keyword]


# --- docker-compose.yml --------------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def compose_service(name: str) -> dict[str, Any]:
    service = compose()["services"][name]
    assert isinstance(service, dict)
    return service


def compose_environment(name: str) -> dict[str, str]:
    """What the service's process sees under `docker compose up`: its env_file, then its `environment`."""
    return dict(user_project().services[name].environment)


# --- k8s/ ----------------------------------------------------------------------------------------------------


@functools.cache
def kustomization() -> dict[str, Any]:
    loaded = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@functools.cache
def k8s_documents(file_name: str) -> tuple[dict[str, Any], ...]:
    documents = [doc for doc in yaml.safe_load_all((K8S / file_name).read_text(encoding="utf-8")) if doc is not None]
    assert all(isinstance(doc, dict) for doc in documents)
    return tuple(documents)


def k8s_resources() -> list[dict[str, Any]]:
    return [doc for file_name in kustomization()["resources"] for doc in k8s_documents(file_name)]


def k8s_resource(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in k8s_resources() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def generated_config_maps() -> dict[str, dict[str, str]]:
    """The ConfigMaps of configMapGenerator, by name: their data read from the env files."""
    maps: dict[str, dict[str, str]] = {}
    for generator in kustomization().get("configMapGenerator", []):
        data: dict[str, str] = {}
        for env_file in generator.get("envs", []):
            data.update(read_env_file(K8S / env_file))
        maps[generator["name"]] = data
    return maps


def pod_template(workload: Mapping[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment or a CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template = spec["template"]
    assert isinstance(template, dict)
    return template


def workloads() -> dict[str, dict[str, Any]]:
    """Each service's Deployment or CronJob, by service name (from its component label)."""
    found: dict[str, dict[str, Any]] = {}
    for doc in k8s_resources():
        if doc["kind"] in ("Deployment", "CronJob"):
            found[doc["metadata"]["labels"]["app.kubernetes.io/component"]] = doc
    return found


def container_environment(container: Mapping[str, Any], secret_stub: str) -> dict[str, str]:
    """What a container's process sees: its ConfigMaps, then its own env; secret references become `secret_stub`."""
    config_maps = generated_config_maps()
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        environment.update(config_maps[source["configMapRef"]["name"]])
    for variable in container.get("env", []):
        environment[variable["name"]] = variable.get("value", secret_stub)
    return environment


def pyproject(path: Path = REPO / "pyproject.toml") -> dict[str, Any]:
    with path.open("rb") as file:
        return tomllib.load(file)
