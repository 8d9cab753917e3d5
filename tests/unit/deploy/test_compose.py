"""Static checks of the compose files (docker-compose.yml, its env file and the CI override) against the
settings classes, the sandbox and the bus topology."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import pytest

from tests.container.compose import CI_OVERRIDE, COMPOSE_FILE, ci_project, user_project
from tests.fixtures.sandbox import SandboxFactory
from tests.unit.deploy.manifests import (
    REPO,
    SERVICES,
    SETTINGS,
    all_env_names,
    compose,
    compose_environment,
    compose_service,
    dockerfile_path,
    env_names,
    secret_env_names,
)
from tibridge.common.settings import ENV_PREFIX, load_settings
from tibridge.common.topology import emulator_config_json
from tibridge.sandbox import SandboxConfig

EMULATOR_CONFIG_MOUNT = "/ServiceBus_Emulator/ConfigFiles/Config.json"
SANDBOX_PORT_ARGUMENT = "--port"


def _sandbox_port() -> str:
    command = compose_service("sandbox")["command"]
    return str(command[command.index(SANDBOX_PORT_ARGUMENT) + 1])


def _depends_on(name: str) -> set[str]:
    return set(compose_service(name).get("depends_on", {}))


def _started_with(name: str) -> set[str]:
    """What `docker compose up NAME` starts: NAME and, transitively, what it depends on."""
    started, pending = set(), [name]
    while pending:
        current = pending.pop()
        if current not in started:
            started.add(current)
            pending += _depends_on(current)
    return started


def test_the_emulator_reads_the_topology_generated_config() -> None:
    emulator = compose_service("servicebus")
    assert emulator["image"] == "mcr.microsoft.com/azure-messaging/servicebus-emulator:latest"
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in emulator["volumes"]}
    assert mounts[EMULATOR_CONFIG_MOUNT] == "./servicebus/config.json"
    assert (REPO / "servicebus/config.json").read_text(encoding="utf-8") == emulator_config_json()


def test_the_emulator_finds_its_sql_server_with_the_same_password() -> None:
    emulator = compose_environment("servicebus")
    sql_name = emulator["SQL_SERVER"]
    assert compose_service(sql_name)["image"] == "mcr.microsoft.com/mssql/server:2022-latest"
    sql = compose_environment(sql_name)
    assert sql["ACCEPT_EULA"] == emulator["ACCEPT_EULA"] == "Y"
    # Both read the same variable, whose default is the documented local-only password.
    raw = compose_service("servicebus")["environment"]["MSSQL_SA_PASSWORD"]
    assert raw == compose_service(sql_name)["environment"]["MSSQL_SA_PASSWORD"]
    assert raw.startswith("${MSSQL_SA_PASSWORD:-")
    assert sql_name in _depends_on("servicebus")


def test_compose_up_servicebus_starts_only_the_emulator_and_its_database() -> None:
    assert _started_with("servicebus") == {"servicebus", compose_environment("servicebus")["SQL_SERVER"]}


def test_compose_up_starts_everything() -> None:
    # No profiles: a plain `docker compose up` is the whole pipeline, as the README says.
    assert not [name for name in compose()["services"] if compose_service(name).get("profiles")]


def test_dependencies_name_existing_services() -> None:
    for name in compose()["services"]:
        assert _depends_on(name) <= set(compose()["services"]), name


@pytest.mark.parametrize("image", [*SERVICES, "sandbox"])
def test_each_image_builds_from_its_dockerfile_at_the_repository_root(image: str) -> None:
    service = user_project().services[image]
    assert service.build["context"] == "."
    assert REPO / service.build["dockerfile"] == dockerfile_path(image)
    assert service.image == f"tibridge-{image}:local"


ENV_NAME = re.compile(r"\b" + ENV_PREFIX + r"[A-Z0-9_]*[A-Z0-9]")


@pytest.mark.parametrize("path", [COMPOSE_FILE, CI_OVERRIDE, REPO / "docker-compose.env"], ids=lambda path: path.name)
def test_every_tibridge_name_in_the_compose_files_is_a_setting(path: object) -> None:
    assert isinstance(path, type(REPO))
    unknown = set(ENV_NAME.findall(path.read_text(encoding="utf-8"))) - all_env_names()
    assert not unknown, f"{path.name} names {sorted(unknown)}, which no settings class has"


def test_ci_puts_the_double_in_the_emulators_place() -> None:
    ci, user = ci_project(), user_project()
    double = ci.services["servicebus"]
    assert double.image == "tibridge-sbdouble:local"
    assert REPO / double.build["dockerfile"] == dockerfile_path("sbdouble")
    # The same mounted config.json as the emulator's, read from the same place.
    assert double.volumes == user.services["servicebus"].volumes
    assert double.depends_on == {}
    assert double.environment == {}
    assert set(ci.services) == set(user.services) - {"mssql"}, "CI starts everything but the emulator's database"
    for service in SERVICES:
        assert ci.services[service].depends_on == user.services[service].depends_on
        changed = {
            name
            for name, value in ci.services[service].environment.items()
            if user.services[service].environment.get(name) != value
        }
        assert changed <= {"TIBRIDGE_PUBLISHER_AUTO_APPROVE"}, f"{service}: CI changes {sorted(changed)}"


@pytest.mark.parametrize("service", SERVICES)
def test_ci_environment_is_valid_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in ci_project().services[service].environment.items():
        monkeypatch.setenv(name, value)
    load_settings(SETTINGS[service])


@pytest.mark.parametrize("service", [*SERVICES, "sandbox"])
def test_containers_run_with_a_read_only_root(service: str) -> None:
    for project in (user_project(), ci_project()):
        assert project.services[service].read_only
        assert "/tmp" in project.services[service].tmpfs


@pytest.mark.parametrize("service", SERVICES)
def test_service_environment_names_are_settings(service: str) -> None:
    # The env file is shared (each service reads only its own names); what a service sets itself is its own.
    own = {name for name in compose_service(service).get("environment", {}) if name.startswith(ENV_PREFIX)}
    assert not own - env_names(SETTINGS[service]), f"{service}: {sorted(own)} are not all its settings"
    unknown = {name for name in compose_environment(service) if name.startswith(ENV_PREFIX)} - all_env_names()
    assert not unknown, f"{service}: {sorted(unknown)} are no service's settings"


@pytest.mark.parametrize("service", SERVICES)
def test_service_environment_is_valid_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in compose_environment(service).items():
        monkeypatch.setenv(name, value)
    load_settings(SETTINGS[service])  # raises SettingsError naming the bad setting


@pytest.mark.parametrize("service", SERVICES)
def test_services_reach_the_sandbox_on_loopback_and_the_emulator_by_name(service: str) -> None:
    # The sandbox listens on 127.0.0.1 only, so the services live in its network namespace.
    assert compose_service(service)["network_mode"] == "service:sandbox"
    assert "sandbox" in _depends_on(service)
    for name, value in compose_environment(service).items():
        if value.startswith("http://"):
            assert urlsplit(value).hostname == "127.0.0.1", name
            assert str(urlsplit(value).port) == _sandbox_port(), f"{name} misses the sandbox's port"
    connection = compose_environment(service)["TIBRIDGE_SERVICEBUS_CONNECTION_STRING"]
    endpoint = re.search(r"Endpoint=sb://([^;:/]+)", connection)
    assert endpoint is not None
    assert endpoint[1] in compose()["services"]
    assert endpoint[1] in _depends_on(service)
    assert "UseDevelopmentEmulator=true" in connection


def test_services_sharing_the_sandbox_namespace_use_distinct_health_ports() -> None:
    ports = [compose_environment(service)["TIBRIDGE_HEALTH_PORT"] for service in SERVICES]
    assert len(set(ports)) == len(ports)
    assert _sandbox_port() not in ports


# Depends on the data served, not on where the sandbox is: compose must reach back at least as far.
LOOKBACK = "TIBRIDGE_COLLECTOR_INITIAL_LOOKBACK"


async def test_sandbox_settings_match_what_the_sandbox_serves(sandbox_factory: SandboxFactory) -> None:
    async with sandbox_factory(indicators=500, anchor=None) as server:
        served = {
            name: value.replace(f":{server.port}/", f":{_sandbox_port()}/") for name, value in server.env().items()
        }
    for service in SERVICES:
        environment = compose_environment(service)
        for name in env_names(SETTINGS[service]) & set(served) - {LOOKBACK}:
            assert environment.get(name) == served[name], f"{service}: {name}"
    compose_days = int(compose_environment("collector")[LOOKBACK].strip("PD"))
    assert compose_days >= int(served[LOOKBACK].strip("PD")), "the collector would miss the sandbox's oldest rows"


@pytest.mark.parametrize("service", SERVICES)
def test_the_only_secrets_in_compose_are_the_local_stand_ins_fixed_ones(service: str) -> None:
    sandbox_key = SandboxConfig().threatstream_api_key.get_secret_value()
    for name in secret_env_names(SETTINGS[service]) & set(compose_environment(service)):
        value = compose_environment(service)[name]
        if name == "TIBRIDGE_SERVICEBUS_CONNECTION_STRING":
            assert "SharedAccessKey=SAS_KEY_VALUE;" in value, "only the emulator's documented key belongs here"
        else:
            assert value == sandbox_key, f"{service}: {name} holds something other than the sandbox's fixed key"
