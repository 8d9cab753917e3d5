"""Static checks of docker-compose.yml against the settings classes, the sandbox and the bus topology."""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit

import pytest

from tests.fixtures.sandbox import SandboxFactory
from tests.unit.deploy.manifests import (
    IMAGES,
    REPO,
    SERVICES,
    SETTINGS,
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


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_builds_from_its_dockerfile_at_the_repository_root(image: str) -> None:
    build = compose_service(image)["build"]
    assert build["context"] == "."
    assert REPO / build["dockerfile"] == dockerfile_path(image)


@pytest.mark.parametrize("service", SERVICES)
def test_service_environment_names_are_settings(service: str) -> None:
    unknown = {name for name in compose_environment(service) if name.startswith(ENV_PREFIX)} - env_names(
        SETTINGS[service]
    )
    assert not unknown, f"{service}: {sorted(unknown)} are not settings of {SETTINGS[service].__name__}"


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
