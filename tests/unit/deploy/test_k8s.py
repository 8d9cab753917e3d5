"""Static checks of the kustomize base in k8s/ against the images, the settings and the bus topology."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.unit.deploy.manifests import (
    K8S,
    SERVICES,
    SETTINGS,
    container_environment,
    dockerfile,
    env_names,
    generated_config_maps,
    k8s_documents,
    k8s_resource,
    k8s_resources,
    kustomization,
    only,
    pod_template,
    secret_env_names,
    workloads,
)
from tibridge.collector.settings import CheckpointKind, CollectorSettings
from tibridge.common.runtime import SETTLE_ALLOWANCE_SECONDS
from tibridge.common.settings import ENV_PREFIX, ServiceSettings, load_settings
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION

EXPECTED_KINDS = {
    "namespace.yaml": ["Namespace"],
    "serviceaccount.yaml": ["ServiceAccount"],
    "collector-cronjob.yaml": ["CronJob"],
    "scorer-deployment.yaml": ["Deployment"],
    "scorer-scaledobject.yaml": ["TriggerAuthentication", "ScaledObject"],
    "publisher-deployment.yaml": ["Deployment"],
    "publisher-pdb.yaml": ["PodDisruptionBudget"],
}
SECRET_STUB = "from-a-kubernetes-secret"
WORKLOAD_IDENTITY_LABEL = "azure.workload.identity/use"
WORKLOAD_IDENTITY_CLIENT_ID = "azure.workload.identity/client-id"


def _container(service: str) -> dict[str, Any]:
    (container,) = pod_template(workloads()[service])["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _settings(service: str, monkeypatch: pytest.MonkeyPatch) -> ServiceSettings:
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    for name, value in container_environment(_container(service), SECRET_STUB).items():
        monkeypatch.setenv(name, value)
    return load_settings(SETTINGS[service])


def _image_uid() -> int:
    (user,) = only(dockerfile("scorer"), "USER")
    return int(user.arguments.partition(":")[0])


def test_kustomization_lists_every_file_of_the_base() -> None:
    listed = set(kustomization()["resources"])
    listed |= {env for generator in kustomization()["configMapGenerator"] for env in generator["envs"]}
    on_disk = {path.name for path in K8S.iterdir()} - {"kustomization.yaml", "README.md"}
    assert listed == on_disk


@pytest.mark.parametrize("file_name", sorted(EXPECTED_KINDS))
def test_manifest_parses_into_the_expected_kinds(file_name: str) -> None:
    assert [doc["kind"] for doc in k8s_documents(file_name)] == EXPECTED_KINDS[file_name]
    assert set(EXPECTED_KINDS) == set(kustomization()["resources"])


def test_everything_lands_in_the_namespace_the_base_creates() -> None:
    (namespace,) = k8s_documents("namespace.yaml")
    assert kustomization()["namespace"] == namespace["metadata"]["name"]


def test_every_service_has_its_workload() -> None:
    assert set(workloads()) == set(SERVICES)
    assert workloads()["collector"]["kind"] == "CronJob"
    assert workloads()["scorer"]["kind"] == workloads()["publisher"]["kind"] == "Deployment"


@pytest.mark.parametrize("service", SERVICES)
def test_pods_run_with_workload_identity(service: str) -> None:
    template = pod_template(workloads()[service])
    assert template["metadata"]["labels"][WORKLOAD_IDENTITY_LABEL] == "true"
    account = k8s_resource("ServiceAccount", template["spec"]["serviceAccountName"])
    assert re.fullmatch(r"[0-9a-f-]{36}", account["metadata"]["annotations"][WORKLOAD_IDENTITY_CLIENT_ID])
    assert container_environment(_container(service), SECRET_STUB)["TIBRIDGE_CREDENTIAL"] == "default"


@pytest.mark.parametrize("service", SERVICES)
def test_pods_are_locked_down(service: str) -> None:
    spec = pod_template(workloads()[service])["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == _image_uid()
    container = _container(service)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


@pytest.mark.parametrize("service", SERVICES)
def test_pods_run_their_services_image(service: str) -> None:
    image = _container(service)["image"]
    assert image.partition(":")[0] == f"tibridge-{service}"
    assert f"tibridge-{service}" in {entry["name"] for entry in kustomization()["images"]}
    assert "command" not in _container(service), "the image's ENTRYPOINT (`tibridge <service>`) is the command"


@pytest.mark.parametrize("service", SERVICES)
def test_container_environment_names_are_settings(service: str) -> None:
    unknown = set(container_environment(_container(service), SECRET_STUB)) - env_names(SETTINGS[service])
    # Shared ConfigMap: a name must belong to at least one service.
    unknown -= set().union(*(env_names(settings) for settings in SETTINGS.values()))
    assert not unknown, f"{sorted(unknown)} are no service's settings"


@pytest.mark.parametrize("service", SERVICES)
def test_container_environment_is_valid_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _settings(service, monkeypatch)  # raises SettingsError naming the bad setting


@pytest.mark.parametrize("service", SERVICES)
def test_secrets_come_only_from_kubernetes_secrets(service: str) -> None:
    secrets = secret_env_names(SETTINGS[service])
    for config_map in generated_config_maps().values():
        assert not secrets & set(config_map), "a secret setting sits in a ConfigMap"
    for variable in _container(service).get("env", []):
        if variable["name"] in secrets:
            assert "secretKeyRef" in variable["valueFrom"], f"{variable['name']} must come from a Secret"


def test_publisher_takes_the_threatstream_credentials_from_a_secret() -> None:
    referenced = {
        variable["name"]: variable["valueFrom"]["secretKeyRef"]
        for variable in _container("publisher")["env"]
        if "secretKeyRef" in variable.get("valueFrom", {})
    }
    assert set(referenced) == {"TIBRIDGE_THREATSTREAM_USERNAME", "TIBRIDGE_THREATSTREAM_API_KEY"}
    assert {ref["name"] for ref in referenced.values()} == {"tibridge-threatstream"}


@pytest.mark.parametrize("service", ["scorer", "publisher"])
def test_deployments_probe_health_and_readiness_on_the_health_port(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = _container(service)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    settings = _settings(service, monkeypatch)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"]["path"] == path
        assert ports[container[probe]["httpGet"]["port"]] == settings.health.port


@pytest.mark.parametrize("service", SERVICES)
def test_kubernetes_waits_for_a_graceful_shutdown(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(service, monkeypatch)
    grace = pod_template(workloads()[service])["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.shutdown_grace_seconds + SETTLE_ALLOWANCE_SECONDS


def test_collector_runs_once_per_schedule_never_overlapping(monkeypatch: pytest.MonkeyPatch) -> None:
    cronjob = workloads()["collector"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert _container("collector")["args"] == ["--once"]
    settings = _settings("collector", monkeypatch)
    assert isinstance(settings, CollectorSettings)
    assert settings.checkpoint.store is CheckpointKind.BLOB
    assert settings.checkpoint.account_url is not None, "workload identity reaches Blob Storage by its URL"


def test_scorer_scales_on_its_subscription_backlog_with_workload_identity() -> None:
    scaled = k8s_resource("ScaledObject", "tibridge-scorer")
    assert scaled["spec"]["scaleTargetRef"]["name"] == workloads()["scorer"]["metadata"]["name"]
    assert "replicas" not in workloads()["scorer"]["spec"], "KEDA owns the scorer's replica count"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "azure-servicebus"
    assert trigger["metadata"]["topicName"] == INDICATORS_TOPIC
    assert trigger["metadata"]["subscriptionName"] == SCORER_SUBSCRIPTION
    authentication = k8s_resource("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert authentication["spec"]["podIdentity"]["provider"] == "azure-workload"


def test_the_keda_namespace_comes_from_the_settings() -> None:
    (replacement,) = kustomization()["replacements"]
    source = replacement["source"]
    assert source["fieldPath"] == "data.TIBRIDGE_SERVICEBUS_NAMESPACE"
    assert source["name"] in generated_config_maps()
    (target,) = replacement["targets"]
    assert target["select"] == {"kind": "ScaledObject", "name": "tibridge-scorer"}


def test_publisher_disruption_budget_keeps_one_running() -> None:
    budget = k8s_resource("PodDisruptionBudget", "tibridge-publisher")
    publisher = workloads()["publisher"]
    labels = pod_template(publisher)["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert publisher["spec"]["replicas"] > budget["spec"]["maxUnavailable"]


def test_no_secret_values_in_the_base() -> None:
    suspicious = re.compile(r"(AccountKey|SharedAccessKey|Password|api[-_]?key|secret)\s*[=:]\s*\S", re.IGNORECASE)
    for path in [*K8S.glob("*.yaml"), *K8S.glob("*.env")]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            assert not suspicious.search(line), f"k8s/{path.name}:{number} looks like a secret value"
    assert not [doc for doc in k8s_resources() if doc["kind"] == "Secret"], "the base must not carry a Secret"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed; the YAML checks above still ran")
def test_kustomize_builds_the_base() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    documents = list(yaml.safe_load_all(built))
    namespace = generated_config_maps()["tibridge-settings"]["TIBRIDGE_SERVICEBUS_NAMESPACE"].split(".")[0]
    (scaled,) = [doc for doc in documents if doc["kind"] == "ScaledObject"]
    assert scaled["spec"]["triggers"][0]["metadata"]["namespace"] == namespace
    (config_map,) = [doc for doc in documents if doc["kind"] == "ConfigMap"]
    for workload in [doc for doc in documents if doc["kind"] in ("Deployment", "CronJob")]:
        (container,) = pod_template(workload)["spec"]["containers"]
        assert container["envFrom"][0]["configMapRef"]["name"] == config_map["metadata"]["name"]
