"""The ARM template in deploy/azure: what the topology and the settings classes generate, and safe to publish."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.unit.deploy.manifests import AZURE_TEMPLATE, SETTINGS, env_names
from tibridge.common.topology import TOPOLOGY, iso_duration
from tibridge.deploy.azure import ROLES, SCALING, grants, setting, template, template_json


def _resources(kind: str) -> list[dict[str, Any]]:
    return [resource for resource in template()["resources"] if resource["type"] == kind]


def _containers() -> dict[str, dict[str, Any]]:
    found = {}
    for kind in ("Microsoft.App/jobs", "Microsoft.App/containerApps"):
        for resource in _resources(kind):
            (container,) = resource["properties"]["template"]["containers"]
            found[container["name"]] = container
    return found


def test_checked_in_template_is_what_the_topology_generates() -> None:
    assert AZURE_TEMPLATE.read_text(encoding="utf-8") == template_json(), (
        "deploy/azure/main.json differs from what tibridge.deploy.azure generates: run `make azure-template`"
    )


def _entity(resource: dict[str, Any]) -> str:
    """`[format('{0}/indicators/scorer', parameters(...))]` -> `indicators/scorer`."""
    match = re.search(r"'\{0\}/([^']+)'", resource["name"])
    assert match is not None, resource["name"]
    return match[1]


def test_every_topic_subscription_and_rule_of_the_topology_is_created() -> None:
    topics = {_entity(each): each for each in _resources("Microsoft.ServiceBus/namespaces/topics")}
    subscriptions = {_entity(each): each for each in _resources("Microsoft.ServiceBus/namespaces/topics/subscriptions")}
    rules = {_entity(each): each for each in _resources("Microsoft.ServiceBus/namespaces/topics/subscriptions/rules")}
    assert set(topics) == {topic.name for topic in TOPOLOGY.topics}
    assert set(subscriptions) == {
        f"{topic.name}/{sub.name}" for topic in TOPOLOGY.topics for sub in topic.subscriptions
    }
    for topic in TOPOLOGY.topics:
        properties = topics[topic.name]["properties"]
        assert properties["requiresDuplicateDetection"] is True
        assert properties["duplicateDetectionHistoryTimeWindow"] == iso_duration(topic.duplicate_detection_window)
        for sub in topic.subscriptions:
            made = subscriptions[f"{topic.name}/{sub.name}"]["properties"]
            assert made["lockDuration"] == iso_duration(sub.lock_duration)
            assert made["maxDeliveryCount"] == sub.max_delivery_count
            assert made["deadLetteringOnMessageExpiration"] is True
            rule = rules.get(f"{topic.name}/{sub.name}/$Default")
            sql = rule["properties"]["sqlFilter"]["sqlExpression"] if rule else None
            assert sql == (sub.rule.sql if sub.rule else None)
    assert len(rules) == sum(1 for topic in TOPOLOGY.topics for sub in topic.subscriptions if sub.rule)


def test_each_identity_has_exactly_its_roles() -> None:
    by_identity: dict[str, set[str]] = {}
    for grant in grants():
        by_identity.setdefault(grant.identity, set()).add(grant.role)
    assert by_identity == {
        "identity_collector": {"Azure Service Bus Data Sender", "Storage Blob Data Contributor"},
        "identity_scorer": {"Azure Service Bus Data Sender", "Azure Service Bus Data Receiver"},
        "identity_publisher": {"Azure Service Bus Data Receiver"},
        "scalerIdentity": {"Azure Service Bus Data Owner"},
    }
    assignments = _resources("Microsoft.Authorization/roleAssignments")
    assert len(assignments) == len(grants())
    (checkpoint,) = [grant for grant in grants() if grant.role == "Storage Blob Data Contributor"]
    assert checkpoint.scope_type.endswith("/containers"), "the collector writes its one container, not the account"
    # Log Analytics Reader on the Sentinel workspace, which may be in another resource group.
    (nested,) = _resources("Microsoft.Resources/deployments")
    (reader,) = nested["properties"]["template"]["resources"]
    assert ROLES["Log Analytics Reader"] in reader["properties"]["roleDefinitionId"]
    assert "identity_collector" in json.dumps(nested["properties"]["parameters"])


def test_the_collector_is_a_scheduled_job_and_the_consumers_scale_with_a_managed_identity() -> None:
    (job,) = _resources("Microsoft.App/jobs")
    assert job["properties"]["configuration"]["triggerType"] == "Schedule"
    apps = {
        resource["name"].removeprefix("tibridge-"): resource for resource in _resources("Microsoft.App/containerApps")
    }
    assert set(apps) == set(SCALING)
    for service, scaling in SCALING.items():
        (rule,) = apps[service]["properties"]["template"]["scale"]["rules"]
        custom = rule["custom"]
        assert custom["type"] == "azure-servicebus"
        assert "auth" not in custom, "the scale rule authenticates with its managed identity, not a secret"
        assert "scalerIdentity" in custom["identity"]
        assert custom["identity"] in apps[service]["identity"]["userAssignedIdentities"]
        assert (custom["metadata"]["topicName"], custom["metadata"]["subscriptionName"]) == (
            scaling.topic,
            scaling.subscription,
        )
        TOPOLOGY.topic(scaling.topic).subscription(scaling.subscription)
        lock = TOPOLOGY.topic(scaling.topic).subscription(scaling.subscription).lock_duration.total_seconds()
        assert apps[service]["properties"]["template"]["terminationGracePeriodSeconds"] > lock


@pytest.mark.parametrize("service", list(SETTINGS))
def test_every_tibridge_variable_a_container_gets_is_its_setting(service: str) -> None:
    names = {variable["name"] for variable in _containers()[service]["env"]} - {"AZURE_CLIENT_ID"}
    assert names <= env_names(SETTINGS[service])
    assert setting(service, "servicebus_namespace") in names


def test_a_missing_setting_fails_the_generation() -> None:
    with pytest.raises(KeyError, match="no setting"):
        setting("scorer", "threatstream_api_key")


def test_no_secret_value_in_the_template() -> None:
    text = AZURE_TEMPLATE.read_text(encoding="utf-8")
    assert not re.search(r"(AccountKey|SharedAccessKey|Password)\s*=", text, re.IGNORECASE)
    parameters = template()["parameters"]
    for name, parameter in parameters.items():
        if parameter["type"] == "securestring":
            assert "defaultValue" not in parameter, f"{name} must come from the deployment, not the template"
    (publisher,) = [app for app in _resources("Microsoft.App/containerApps") if app["name"] == "tibridge-publisher"]
    (secret,) = publisher["properties"]["configuration"]["secrets"]
    assert secret["value"] == "[parameters('threatstreamApiKey')]"
    assert parameters["threatstreamApiKey"]["type"] == "securestring"
    (namespace,) = _resources("Microsoft.ServiceBus/namespaces")
    assert namespace["properties"]["disableLocalAuth"] is True, "no shared access keys exist to leak"
    (account,) = _resources("Microsoft.Storage/storageAccounts")
    assert account["properties"]["allowSharedKeyAccess"] is False
