"""Checks of the kustomize base (k8s/base) and the local overlay (k8s/local) against the images, the settings
and the bus topology; rendered with kubectl and validated against the Kubernetes schemas."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.unit.deploy.manifests import (
    K8S,
    K8S_LOCAL,
    SERVICES,
    SETTINGS,
    all_env_names,
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
from tibridge.common.topology import (
    INDICATORS_TOPIC,
    PUBLISHER_SUBSCRIPTION,
    SCORED_TOPIC,
    SCORER_SUBSCRIPTION,
    TOPOLOGY,
    emulator_config_json,
)

EXPECTED_KINDS = {
    "namespace.yaml": ["Namespace"],
    "serviceaccount.yaml": ["ServiceAccount"],
    "collector-cronjob.yaml": ["CronJob"],
    "scorer-deployment.yaml": ["Deployment"],
    "publisher-deployment.yaml": ["Deployment"],
    "publisher-pdb.yaml": ["PodDisruptionBudget"],
    "scaledobjects.yaml": ["TriggerAuthentication", "ScaledObject", "ScaledObject"],
    "networkpolicy.yaml": ["NetworkPolicy"],
}
# Which subscription each consuming service reads, and so scales on.
CONSUMES = {"scorer": (INDICATORS_TOPIC, SCORER_SUBSCRIPTION), "publisher": (SCORED_TOPIC, PUBLISHER_SUBSCRIPTION)}
KUBERNETES_VERSION = "1.30"
# The fields KEDA documents for these kinds (keda.sh/docs/2.x/reference/scaledobject-spec, .../authentication).
KEDA_FIELDS = {
    "ScaledObject": {
        "scaleTargetRef",
        "pollingInterval",
        "cooldownPeriod",
        "initialCooldownPeriod",
        "idleReplicaCount",
        "minReplicaCount",
        "maxReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    },
    "TriggerAuthentication": {"podIdentity", "secretTargetRef", "env", "hashiCorpVault", "azureKeyVault"},
}
KEDA_SERVICEBUS_METADATA = {
    "queueName",
    "topicName",
    "subscriptionName",
    "namespace",
    "messageCount",
    "activationMessageCount",
    "cloud",
    "endpointSuffix",
    "connectionFromEnv",
    "useRegex",
    "operation",
}
KEDA_POD_IDENTITY_PROVIDERS = {"none", "azure-workload", "aws", "aws-eks", "gcp"}
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
    on_disk = {path.name for path in K8S.iterdir()} - {"kustomization.yaml"}
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
    settings = _settings("collector", monkeypatch)
    assert isinstance(settings, CollectorSettings)
    assert str(settings.collector.mode) == "once"
    assert settings.checkpoint.store is CheckpointKind.BLOB
    assert settings.checkpoint.account_url is not None, "workload identity reaches Blob Storage by its URL"


@pytest.mark.parametrize("service", sorted(CONSUMES))
def test_consumers_scale_on_their_subscription_backlog_with_workload_identity(service: str) -> None:
    scaled = k8s_resource("ScaledObject", f"tibridge-{service}")
    assert scaled["spec"]["scaleTargetRef"]["name"] == workloads()[service]["metadata"]["name"]
    assert workloads()[service]["kind"] == "Deployment"
    assert "replicas" not in workloads()[service]["spec"], f"KEDA owns the {service}'s replica count"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "azure-servicebus"
    topic, subscription = CONSUMES[service]
    assert (trigger["metadata"]["topicName"], trigger["metadata"]["subscriptionName"]) == (topic, subscription)
    TOPOLOGY.topic(topic).subscription(subscription)  # raises KeyError when the topology lacks it
    authentication = k8s_resource("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert authentication["spec"]["podIdentity"]["provider"] == "azure-workload"


def test_scaled_objects_use_only_the_fields_keda_documents() -> None:
    for document in k8s_resources():
        if document["apiVersion"] == "keda.sh/v1alpha1":
            assert set(document["spec"]) <= KEDA_FIELDS[document["kind"]], document["metadata"]["name"]
            for trigger in document["spec"].get("triggers", []):
                assert set(trigger["metadata"]) <= KEDA_SERVICEBUS_METADATA
                assert all(isinstance(value, str) for value in trigger["metadata"].values()), "metadata are strings"
            if document["kind"] == "TriggerAuthentication":
                assert document["spec"]["podIdentity"]["provider"] in KEDA_POD_IDENTITY_PROVIDERS


@pytest.mark.parametrize("service", sorted(CONSUMES))
def test_kubernetes_waits_longer_than_a_message_lock(service: str) -> None:
    lock = TOPOLOGY.topic(CONSUMES[service][0]).subscription(CONSUMES[service][1]).lock_duration
    assert pod_template(workloads()[service])["spec"]["terminationGracePeriodSeconds"] > lock.total_seconds()


def test_the_keda_namespace_comes_from_the_settings() -> None:
    (replacement,) = kustomization()["replacements"]
    source = replacement["source"]
    assert source["fieldPath"] == "data.TIBRIDGE_SERVICEBUS_NAMESPACE"
    assert source["name"] in generated_config_maps()
    (target,) = replacement["targets"]
    assert target["select"] == {"kind": "ScaledObject"}


def test_publisher_disruption_budget_keeps_one_running() -> None:
    budget = k8s_resource("PodDisruptionBudget", "tibridge-publisher")
    labels = pod_template(workloads()["publisher"])["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    minimum = k8s_resource("ScaledObject", "tibridge-publisher")["spec"]["minReplicaCount"]
    assert minimum > budget["spec"]["maxUnavailable"]


def test_network_policy_covers_every_pod_and_lets_out_only_dns_https_and_amqps() -> None:
    policy = k8s_resource("NetworkPolicy", "tibridge")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for service in SERVICES:
        assert selector.items() <= pod_template(workloads()[service])["metadata"]["labels"].items()
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["spec"]["ingress"]
    assert [port["port"] for port in ingress["ports"]] == [8080]
    ports = {(port["protocol"], port["port"]) for rule in policy["spec"]["egress"] for port in rule["ports"]}
    assert ports == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 5671)}


SUSPICIOUS = re.compile(r"(AccountKey|SharedAccessKey|Password|api[-_]?key|secret)\s*[=:]\s*\S", re.IGNORECASE)
# The emulator's fixed, documented development key: no secret, the same for every emulator.
EMULATOR_KEY = "SharedAccessKey=SAS_KEY_VALUE;"


@pytest.mark.parametrize("directory", [K8S, K8S_LOCAL], ids=["base", "local"])
def test_no_secret_values_in_the_manifests(directory: Any) -> None:
    for path in [*directory.glob("*.yaml"), *directory.glob("*.env")]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.replace(EMULATOR_KEY, "")
            assert not SUSPICIOUS.search(line), f"{path.relative_to(K8S.parent)}:{number} looks like a secret value"
    assert not [doc for doc in k8s_resources() if doc["kind"] == "Secret"], "the base must not carry a Secret"


ENV_NAME = re.compile(r"\bTIBRIDGE_[A-Z0-9_]*[A-Z0-9]")


def test_every_tibridge_name_in_the_manifests_is_a_setting() -> None:
    for path in [*K8S.parent.rglob("*.yaml"), *K8S.parent.rglob("*.env")]:
        unknown = set(ENV_NAME.findall(path.read_text(encoding="utf-8"))) - all_env_names()
        assert not unknown, f"{path.relative_to(K8S.parent)} names {sorted(unknown)}, which no settings class has"


def test_the_local_overlays_emulator_reads_the_topology() -> None:
    assert (K8S_LOCAL / "servicebus-config.json").read_text(encoding="utf-8") == emulator_config_json(), (
        "k8s/local/servicebus-config.json differs from the topology: run `make emulator-config`"
    )


def _render(directory: Any) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed, so kustomize cannot render; the YAML checks above still ran")
    built = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=True
    )
    return [doc for doc in yaml.safe_load_all(built.stdout) if doc]


@pytest.mark.parametrize("directory", [K8S, K8S_LOCAL], ids=["base", "local"])
def test_rendered_manifests_validate_against_the_kubernetes_schemas(directory: Any) -> None:
    for document in _render(directory):
        if document["apiVersion"].startswith("keda.sh/"):
            continue  # KEDA's own kinds: checked against KEDA's documented fields above
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_local_overlay_points_every_service_at_the_in_cluster_emulator() -> None:
    documents = _render(K8S_LOCAL)
    assert not [doc for doc in documents if doc["apiVersion"].startswith("keda.sh/")], "KEDA cannot read the emulator"
    services = {doc["metadata"]["name"] for doc in documents if doc["kind"] == "Service"}
    (secret,) = [doc for doc in documents if doc["kind"] == "Secret"]
    connection = base64.b64decode(secret["data"]["connection-string"]).decode()
    assert EMULATOR_KEY in connection
    assert "UseDevelopmentEmulator=true" in connection
    endpoint = re.search(r"Endpoint=sb://([^;:/]+)", connection)
    assert endpoint is not None
    assert endpoint[1] in services
    for workload in [
        doc
        for doc in documents
        if doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") in SERVICES
        and doc["kind"] in ("Deployment", "CronJob")
    ]:
        (container,) = pod_template(workload)["spec"]["containers"]
        (reference,) = [env for env in container["env"] if env["name"] == "TIBRIDGE_SERVICEBUS_CONNECTION_STRING"]
        assert reference["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]


def test_kustomize_builds_the_base() -> None:
    documents = _render(K8S)
    namespace = generated_config_maps()["tibridge-settings"]["TIBRIDGE_SERVICEBUS_NAMESPACE"].split(".")[0]
    scaled = [doc for doc in documents if doc["kind"] == "ScaledObject"]
    assert len(scaled) == len(CONSUMES)
    for each in scaled:
        assert each["spec"]["triggers"][0]["metadata"]["namespace"] == namespace
    (config_map,) = [doc for doc in documents if doc["kind"] == "ConfigMap"]
    for workload in [doc for doc in documents if doc["kind"] in ("Deployment", "CronJob")]:
        (container,) = pod_template(workload)["spec"]["containers"]
        assert container["envFrom"][0]["configMapRef"]["name"] == config_map["metadata"]["name"]
