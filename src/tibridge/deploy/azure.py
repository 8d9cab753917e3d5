"""The Azure deployment as an ARM template, generated from the bus topology and the settings classes.

One resource-group deployment creates everything tibridge runs on in Azure: the Service Bus namespace with
the topology's topics, subscriptions, rule, lock durations and delivery counts; the checkpoint storage
account and container; a user-assigned identity per service with exactly its roles; and Azure Container
Apps: an environment, the collector as a scheduled job, the scorer and the publisher as apps scaled by
KEDA `azure-servicebus` rules that authenticate with a managed identity. `deploy/azure/main.json` is this
module's output (`make azure-template`); a test fails when the checked-in file drifts.

Settings reach the containers as TIBRIDGE_* variables named by `setting()`, which refuses a name that is
not a field of the service's settings class, so a renamed setting fails the generation, not a deployment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic.fields import FieldInfo

from tibridge.collector.settings import CollectorSettings
from tibridge.common.settings import ENV_PREFIX, ServiceSettings, setting_fields
from tibridge.common.topology import (
    INDICATORS_TOPIC,
    PUBLISHER_SUBSCRIPTION,
    SCORED_TOPIC,
    SCORER_SUBSCRIPTION,
    TOPOLOGY,
    Topology,
    iso_duration,
)
from tibridge.publisher.settings import PublisherSettings
from tibridge.scorer.settings import ScorerSettings

SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
API = {
    "Microsoft.ServiceBus": "2021-11-01",
    "Microsoft.Storage": "2023-05-01",
    "Microsoft.ManagedIdentity": "2023-01-31",
    "Microsoft.Authorization": "2022-04-01",
    "Microsoft.OperationalInsights": "2022-10-01",
    # Scale rules authenticate with a managed identity (`identity`) from this version on.
    "Microsoft.App": "2025-01-01",
    "Microsoft.Resources": "2022-09-01",
}
# Built-in role definitions (the same GUID in every tenant).
ROLES = {
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Azure Service Bus Data Owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
    "Log Analytics Reader": "73c42c96-874c-492b-b04d-ab87d138a893",
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
}
SERVICES = ("collector", "scorer", "publisher")
SETTINGS: dict[str, type[ServiceSettings]] = {
    "collector": CollectorSettings,
    "scorer": ScorerSettings,
    "publisher": PublisherSettings,
}
HEALTH_PORT = 8080
# As in k8s/: the collector every 5 minutes; a pass that would run into the next one is cut short (the next
# resumes from the watermark), since a scheduled job does not wait for the previous execution.
COLLECTOR_SCHEDULE = "*/5 * * * *"
COLLECTOR_TIMEOUT_SECONDS = 290
# Longer than each consumer's lock and its shutdown grace plus the runtime's settle allowance.
TERMINATION_GRACE_SECONDS = {"scorer": 75, "publisher": 90}
SHUTDOWN_GRACE_SECONDS = {"publisher": 60}
THREATSTREAM_SECRET = "threatstream-api-key"  # noqa: S105 - the secret's name in the app, not its value


def setting(service: str, name: str) -> str:
    """The environment variable of a setting (`publisher_mode` → TIBRIDGE_PUBLISHER_MODE); one the service's
    settings lack is an error."""
    return _field(service, name)[0]


def default_of(service: str, name: str) -> Any:
    return _field(service, name)[1].default


def _field(service: str, name: str) -> tuple[str, FieldInfo]:
    variable = ENV_PREFIX + name.upper()
    for env, field in setting_fields(SETTINGS[service]):
        if env == variable:
            return env, field
    raise KeyError(f"{SETTINGS[service].__name__} has no setting {variable}")


@dataclass(frozen=True)
class Scaling:
    topic: str
    subscription: str
    min_replicas: int
    max_replicas: int
    messages_per_replica: int


# The same numbers as k8s/base/scaledobjects.yaml.
SCALING = {
    "scorer": Scaling(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, 1, 8, 2000),
    "publisher": Scaling(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION, 2, 4, 5000),
}


# --- expressions ---------------------------------------------------------------------------------------------


def _p(name: str) -> str:
    return f"parameters('{name}')"


def _v(name: str) -> str:
    return f"variables('{name}')"


def _expr(body: str) -> str:
    return f"[{body}]"


def _identity_id(service: str) -> str:
    return _identity_of(f"identity_{service}")


def _identity_property(variable: str, name: str) -> str:
    """An identity's principalId or clientId, known once it exists."""
    return f"reference({_identity_of(variable)}, '{API['Microsoft.ManagedIdentity']}').{name}"


def _namespace_id() -> str:
    return f"resourceId('Microsoft.ServiceBus/namespaces', {_p('serviceBusNamespaceName')})"


def _topic_id(topic: str) -> str:
    return f"resourceId('Microsoft.ServiceBus/namespaces/topics', {_p('serviceBusNamespaceName')}, '{topic}')"


def _subscription_id(topic: str, subscription: str) -> str:
    return (
        "resourceId('Microsoft.ServiceBus/namespaces/topics/subscriptions', "
        f"{_p('serviceBusNamespaceName')}, '{topic}', '{subscription}')"
    )


def _container_id() -> str:
    return (
        "resourceId('Microsoft.Storage/storageAccounts/blobServices/containers', "
        f"{_p('storageAccountName')}, 'default', {_v('checkpointContainer')})"
    )


# --- resources -----------------------------------------------------------------------------------------------


def _parameters() -> dict[str, Any]:
    image = "Container image of the {} (e.g. myregistry.azurecr.io/tibridge-{}:0.1.0)."
    return {
        "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
        "serviceBusNamespaceName": {
            "type": "string",
            "defaultValue": "[format('tibridge-{0}', uniqueString(resourceGroup().id))]",
            "metadata": {"description": "Service Bus namespace (globally unique)."},
        },
        "storageAccountName": {
            "type": "string",
            "defaultValue": "[format('tibridge{0}', uniqueString(resourceGroup().id))]",
            "maxLength": 24,
            "metadata": {"description": "Storage account of the collector's watermark (globally unique)."},
        },
        "sentinelWorkspaceResourceId": {
            "type": "string",
            "metadata": {"description": "Resource ID of the Sentinel workspace the collector reads."},
        },
        "sentinelWorkspaceId": {
            "type": "string",
            "metadata": {"description": "Its Log Analytics workspace ID (a GUID, from the workspace's Overview)."},
        },
        **{
            f"{service}Image": {"type": "string", "metadata": {"description": image.format(service, service)}}
            for service in SERVICES
        },
        "registryServer": {
            "type": "string",
            "defaultValue": "",
            "metadata": {"description": "Registry the images are pulled from with the services' identities."},
        },
        "threatstreamUsername": {"type": "string", "metadata": {"description": "ThreatStream user of the API key."}},
        "threatstreamApiKey": {
            "type": "securestring",
            "metadata": {"description": "That user's ThreatStream API key (kept as a Container Apps secret)."},
        },
        "threatstreamBaseUrl": {
            "type": "string",
            "defaultValue": default_of("publisher", "threatstream_base_url"),
        },
        "threatstreamMode": {"type": "string", "defaultValue": "approval", "allowedValues": ["approval", "direct"]},
        "deployApps": {
            "type": "bool",
            "defaultValue": True,
            "metadata": {
                "description": "false: everything but the job and the apps, so the identities can be granted AcrPull "
                "on the registry before anything pulls an image."
            },
        },
    }


def _variables() -> dict[str, Any]:
    container = default_of("collector", "checkpoint_container")
    return {
        **{f"identity_{service}": f"tibridge-{service}" for service in SERVICES},
        "scalerIdentity": "tibridge-scaler",
        "checkpointContainer": container,
        "environment": "tibridge",
        "logs": "tibridge-logs",
    }


def _servicebus(topology: Topology) -> list[dict[str, Any]]:
    namespace = _p("serviceBusNamespaceName")
    sb = API["Microsoft.ServiceBus"]
    resources: list[dict[str, Any]] = [
        {
            "type": "Microsoft.ServiceBus/namespaces",
            "apiVersion": sb,
            "name": _expr(namespace),
            "location": _expr(_p("location")),
            # Topics need Standard.
            "sku": {"name": "Standard", "tier": "Standard"},
            "properties": {
                # Managed identities only: no shared access key can reach the namespace.
                "disableLocalAuth": True,
                "minimumTlsVersion": "1.2",
                "publicNetworkAccess": "Enabled",
            },
        }
    ]
    for topic in topology.topics:
        resources.append(
            {
                "type": "Microsoft.ServiceBus/namespaces/topics",
                "apiVersion": sb,
                "name": _expr(f"format('{{0}}/{topic.name}', {namespace})"),
                "dependsOn": [_expr(_namespace_id())],
                "properties": {
                    "requiresDuplicateDetection": True,
                    "duplicateDetectionHistoryTimeWindow": iso_duration(topic.duplicate_detection_window),
                    "defaultMessageTimeToLive": iso_duration(topic.message_ttl),
                },
            }
        )
        for sub in topic.subscriptions:
            resources.append(
                {
                    "type": "Microsoft.ServiceBus/namespaces/topics/subscriptions",
                    "apiVersion": sb,
                    "name": _expr(f"format('{{0}}/{topic.name}/{sub.name}', {namespace})"),
                    "dependsOn": [_expr(_topic_id(topic.name))],
                    "properties": {
                        "lockDuration": iso_duration(sub.lock_duration),
                        "maxDeliveryCount": sub.max_delivery_count,
                        "defaultMessageTimeToLive": iso_duration(sub.message_ttl),
                        "deadLetteringOnMessageExpiration": True,
                    },
                }
            )
            if sub.rule is not None:
                # A subscription made through ARM always has a `$Default` rule that lets everything in;
                # the topology's rule takes its place (the emulator's config names it sub.rule.name).
                resources.append(
                    {
                        "type": "Microsoft.ServiceBus/namespaces/topics/subscriptions/rules",
                        "apiVersion": sb,
                        "name": _expr(f"format('{{0}}/{topic.name}/{sub.name}/$Default', {namespace})"),
                        "dependsOn": [_expr(_subscription_id(topic.name, sub.name))],
                        "properties": {"filterType": "SqlFilter", "sqlFilter": {"sqlExpression": sub.rule.sql}},
                    }
                )
    return resources


def _storage() -> list[dict[str, Any]]:
    account = _p("storageAccountName")
    version = API["Microsoft.Storage"]
    return [
        {
            "type": "Microsoft.Storage/storageAccounts",
            "apiVersion": version,
            "name": _expr(account),
            "location": _expr(_p("location")),
            "kind": "StorageV2",
            "sku": {"name": "Standard_LRS"},
            "metadata": {
                "checkov": [
                    "checkov:skip=CKV_AZURE_35: Container Apps' Consumption environment has no fixed egress address "
                    "to allow; access needs an Entra ID token (shared keys are off), with the collector's role only.",
                    "checkov:skip=CKV_AZURE_206: it holds one watermark; lost, the next pass re-reads the initial "
                    "lookback and duplicate detection and idempotent upserts absorb the overlap.",
                    "checkov:skip=CKV_AZURE_43: the name is a template expression checkov cannot evaluate; "
                    "uniqueString() yields 13 lowercase alphanumerics, 21 characters with the prefix.",
                ]
            },
            "properties": {
                # Azure's own services (backup, monitoring) through the firewall; every caller still needs a role.
                "networkAcls": {"bypass": "AzureServices", "defaultAction": "Allow"},
                "minimumTlsVersion": "TLS1_2",
                "supportsHttpsTrafficOnly": True,
                "allowBlobPublicAccess": False,
                # The collector's identity only: no account key, no SAS.
                "allowSharedKeyAccess": False,
                "defaultToOAuthAuthentication": True,
                "encryption": {"requireInfrastructureEncryption": True, "keySource": "Microsoft.Storage"},
            },
        },
        {
            "type": "Microsoft.Storage/storageAccounts/blobServices",
            "apiVersion": version,
            "name": _expr(f"format('{{0}}/default', {account})"),
            "dependsOn": [_expr(f"resourceId('Microsoft.Storage/storageAccounts', {account})")],
            "properties": {"deleteRetentionPolicy": {"enabled": True, "days": 7}},
        },
        {
            "type": "Microsoft.Storage/storageAccounts/blobServices/containers",
            "apiVersion": version,
            "name": _expr(f"format('{{0}}/default/{{1}}', {account}, {_v('checkpointContainer')})"),
            "dependsOn": [_expr(f"resourceId('Microsoft.Storage/storageAccounts/blobServices', {account}, 'default')")],
            "properties": {"publicAccess": "None"},
        },
    ]


def _identities() -> list[dict[str, Any]]:
    return [
        {
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
            "apiVersion": API["Microsoft.ManagedIdentity"],
            "name": _expr(_v(name)),
            "location": _expr(_p("location")),
        }
        for name in [*(f"identity_{service}" for service in SERVICES), "scalerIdentity"]
    ]


@dataclass(frozen=True)
class Grant:
    """One role assignment: who (an identity variable), which role, on what (resource type + id expression)."""

    identity: str
    role: str
    scope_type: str
    scope_id: str


def grants() -> list[Grant]:
    """Every identity's roles. The services' bus roles are on the namespace because every service's readiness
    check peeks at indicators/scorer (tibridge.common.bus.servicebus.READINESS_SUBSCRIPTION)."""
    namespace = ("Microsoft.ServiceBus/namespaces", _namespace_id())
    return [
        Grant("identity_collector", "Azure Service Bus Data Sender", *namespace),
        Grant(
            "identity_collector",
            "Storage Blob Data Contributor",
            "Microsoft.Storage/storageAccounts/blobServices/containers",
            _container_id(),
        ),
        Grant("identity_scorer", "Azure Service Bus Data Receiver", *namespace),
        Grant("identity_scorer", "Azure Service Bus Data Sender", *namespace),
        Grant("identity_publisher", "Azure Service Bus Data Receiver", *namespace),
        # Reading a subscription's message count (what KEDA scales on) takes the Manage right, which only
        # Data Owner grants: a separate identity that only the scale rules use, on the two scaled topics.
        *(
            Grant(
                "scalerIdentity",
                "Azure Service Bus Data Owner",
                "Microsoft.ServiceBus/namespaces/topics",
                _topic_id(s.topic),
            )
            for s in SCALING.values()
        ),
    ]


def _role_assignment(grant: Grant) -> dict[str, Any]:
    principal = _identity_property(grant.identity, "principalId")
    role = f"subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '{ROLES[grant.role]}')"
    return {
        "type": "Microsoft.Authorization/roleAssignments",
        "apiVersion": API["Microsoft.Authorization"],
        "name": _expr(f"guid({grant.scope_id}, {_v(grant.identity)}, '{ROLES[grant.role]}')"),
        "scope": _expr(grant.scope_id),
        "dependsOn": [_expr(grant.scope_id), _expr(_identity_of(grant.identity))],
        "properties": {
            "roleDefinitionId": _expr(role),
            "principalId": _expr(principal),
            "principalType": "ServicePrincipal",
        },
    }


def _identity_of(variable: str) -> str:
    return f"resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', {_v(variable)})"


def _workspace_reader() -> dict[str, Any]:
    """Log Analytics Reader on the Sentinel workspace, which may live in another resource group: a nested
    deployment into that group."""
    workspace = _p("sentinelWorkspaceResourceId")
    role = ROLES["Log Analytics Reader"]
    principal = _identity_property("identity_collector", "principalId")
    return {
        "type": "Microsoft.Resources/deployments",
        "apiVersion": API["Microsoft.Resources"],
        "name": "tibridge-collector-workspace-reader",
        "subscriptionId": _expr(f"split({workspace}, '/')[2]"),
        "resourceGroup": _expr(f"split({workspace}, '/')[4]"),
        "dependsOn": [_expr(_identity_id("collector"))],
        "properties": {
            "mode": "Incremental",
            "expressionEvaluationOptions": {"scope": "inner"},
            "parameters": {
                "workspaceName": {"value": _expr(f"last(split({workspace}, '/'))")},
                "principalId": {"value": _expr(principal)},
            },
            "template": {
                "$schema": SCHEMA,
                "contentVersion": "1.0.0.0",
                "parameters": {"workspaceName": {"type": "string"}, "principalId": {"type": "string"}},
                "resources": [
                    {
                        "type": "Microsoft.Authorization/roleAssignments",
                        "apiVersion": API["Microsoft.Authorization"],
                        "name": _expr(f"guid({_p('workspaceName')}, {_p('principalId')}, '{role}')"),
                        "scope": _expr(
                            f"resourceId('Microsoft.OperationalInsights/workspaces', {_p('workspaceName')})"
                        ),
                        "properties": {
                            "roleDefinitionId": _expr(
                                f"subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '{role}')"
                            ),
                            "principalId": _expr(_p("principalId")),
                            "principalType": "ServicePrincipal",
                        },
                    }
                ],
            },
        },
    }


def _environment() -> list[dict[str, Any]]:
    logs = f"resourceId('Microsoft.OperationalInsights/workspaces', {_v('logs')})"
    version = API["Microsoft.OperationalInsights"]
    return [
        {
            "type": "Microsoft.OperationalInsights/workspaces",
            "apiVersion": version,
            "name": _expr(_v("logs")),
            "location": _expr(_p("location")),
            "properties": {"sku": {"name": "PerGB2018"}, "retentionInDays": 30},
        },
        {
            "type": "Microsoft.App/managedEnvironments",
            "apiVersion": API["Microsoft.App"],
            "name": _expr(_v("environment")),
            "location": _expr(_p("location")),
            "dependsOn": [_expr(logs)],
            "properties": {
                "appLogsConfiguration": {
                    "destination": "log-analytics",
                    "logAnalyticsConfiguration": {
                        "customerId": _expr(f"reference({logs}, '{version}').customerId"),
                        "sharedKey": _expr(f"listKeys({logs}, '{version}').primarySharedKey"),
                    },
                },
                "workloadProfiles": [{"name": "Consumption", "workloadProfileType": "Consumption"}],
            },
        },
    ]


def _env(service: str, values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": setting(service, field), "value": value} for field, value in values.items()]


def _common_env(service: str) -> dict[str, str]:
    namespace_host = f"[format('{{0}}.servicebus.windows.net', {_p('serviceBusNamespaceName')})]"
    return {"bus": "servicebus", "credential": "default", "servicebus_namespace": namespace_host}


def _container(service: str, env: list[dict[str, str]], probes: bool) -> dict[str, Any]:
    client_id = _identity_property(f"identity_{service}", "clientId")
    container: dict[str, Any] = {
        "name": service,
        "image": _expr(_p(f"{service}Image")),
        # DefaultAzureCredential picks the user-assigned identity named by its client ID.
        "env": [{"name": "AZURE_CLIENT_ID", "value": _expr(client_id)}, *env],
        "resources": {"cpu": 0.5, "memory": "1Gi"},
    }
    if probes:
        container["probes"] = [
            {"type": "Liveness", "httpGet": {"path": "/healthz", "port": HEALTH_PORT}, "periodSeconds": 15},
            {"type": "Readiness", "httpGet": {"path": "/readyz", "port": HEALTH_PORT}, "periodSeconds": 10},
        ]
    return container


def _identity_block(service: str) -> dict[str, Any]:
    identities: dict[str, dict[str, Any]] = {_expr(_identity_id(service)): {}}
    if SCALING.get(service) is not None:
        identities[_expr(_identity_of("scalerIdentity"))] = {}
    return {"type": "UserAssigned", "userAssignedIdentities": identities}


def _registries(service: str) -> str:
    registry = {"server": _p("registryServer"), "identity": _identity_id(service)}
    return _expr(
        f"if(empty({_p('registryServer')}), createArray(), "
        f"createArray(createObject('server', {registry['server']}, 'identity', {registry['identity']})))"
    )


def _collector_job() -> dict[str, Any]:
    env = _env(
        "collector",
        {
            **_common_env("collector"),
            "collector_mode": "once",
            # A job's replica is probed by nothing.
            "health_port": "0",
            "loganalytics_workspace_id": _expr(_p("sentinelWorkspaceId")),
            "checkpoint_store": "blob",
            "checkpoint_account_url": _expr(
                f"reference(resourceId('Microsoft.Storage/storageAccounts', {_p('storageAccountName')}), "
                f"'{API['Microsoft.Storage']}').primaryEndpoints.blob"
            ),
            "checkpoint_container": _expr(_v("checkpointContainer")),
        },
    )
    return {
        "type": "Microsoft.App/jobs",
        "condition": _expr(_p("deployApps")),
        "apiVersion": API["Microsoft.App"],
        "name": "tibridge-collector",
        "location": _expr(_p("location")),
        "identity": _identity_block("collector"),
        "dependsOn": [
            _expr(f"resourceId('Microsoft.App/managedEnvironments', {_v('environment')})"),
            *(_expr(_role_id(grant)) for grant in grants() if grant.identity == "identity_collector"),
        ],
        "properties": {
            "environmentId": _expr(f"resourceId('Microsoft.App/managedEnvironments', {_v('environment')})"),
            "workloadProfileName": "Consumption",
            "configuration": {
                "triggerType": "Schedule",
                "scheduleTriggerConfig": {
                    "cronExpression": COLLECTOR_SCHEDULE,
                    "parallelism": 1,
                    "replicaCompletionCount": 1,
                },
                "replicaTimeout": COLLECTOR_TIMEOUT_SECONDS,
                "replicaRetryLimit": 1,
                "registries": _registries("collector"),
            },
            "template": {"containers": [_container("collector", env, probes=False)]},
        },
    }


def _role_id(grant: Grant) -> str:
    return (
        f"extensionResourceId({grant.scope_id}, 'Microsoft.Authorization/roleAssignments', "
        f"guid({grant.scope_id}, {_v(grant.identity)}, '{ROLES[grant.role]}'))"
    )


def _app(service: str) -> dict[str, Any]:
    scaling = SCALING[service]
    values = {**_common_env(service), "health_port": str(HEALTH_PORT)}
    secrets: list[dict[str, str]] = []
    env = _env(service, values)
    if service == "publisher":
        env += _env(
            service,
            {
                "threatstream_base_url": _expr(_p("threatstreamBaseUrl")),
                "publisher_mode": _expr(_p("threatstreamMode")),
                "threatstream_username": _expr(_p("threatstreamUsername")),
                "shutdown_grace_seconds": str(SHUTDOWN_GRACE_SECONDS["publisher"]),
            },
        )
        env.append({"name": setting(service, "threatstream_api_key"), "secretRef": THREATSTREAM_SECRET})
        secrets.append({"name": THREATSTREAM_SECRET, "value": _expr(_p("threatstreamApiKey"))})
    rule = {
        "name": f"{scaling.topic}-{scaling.subscription}-backlog",
        "custom": {
            "type": "azure-servicebus",
            "metadata": {
                "namespace": _expr(_p("serviceBusNamespaceName")),
                "topicName": scaling.topic,
                "subscriptionName": scaling.subscription,
                "messageCount": str(scaling.messages_per_replica),
            },
            # The scale rule's own managed identity (the app carries it beside the service's).
            "identity": _expr(_identity_of("scalerIdentity")),
        },
    }
    return {
        "type": "Microsoft.App/containerApps",
        "condition": _expr(_p("deployApps")),
        "apiVersion": API["Microsoft.App"],
        "name": f"tibridge-{service}",
        "location": _expr(_p("location")),
        "identity": _identity_block(service),
        "dependsOn": [
            _expr(f"resourceId('Microsoft.App/managedEnvironments', {_v('environment')})"),
            *(
                _expr(_role_id(grant))
                for grant in grants()
                if grant.identity in (f"identity_{service}", "scalerIdentity")
            ),
        ],
        "properties": {
            "environmentId": _expr(f"resourceId('Microsoft.App/managedEnvironments', {_v('environment')})"),
            "workloadProfileName": "Consumption",
            "configuration": {
                "activeRevisionsMode": "Single",
                # No ingress: nothing calls the services; the platform probes the health port directly.
                "secrets": secrets,
                "registries": _registries(service),
            },
            "template": {
                "containers": [_container(service, env, probes=True)],
                "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS[service],
                "scale": {
                    "minReplicas": scaling.min_replicas,
                    "maxReplicas": scaling.max_replicas,
                    "rules": [rule],
                },
            },
        },
    }


def template(topology: Topology = TOPOLOGY) -> dict[str, Any]:
    return {
        "$schema": SCHEMA,
        "contentVersion": "1.0.0.0",
        "metadata": {"generator": "tibridge.deploy.azure (make azure-template); do not edit by hand"},
        "parameters": _parameters(),
        "variables": _variables(),
        "resources": [
            *_servicebus(topology),
            *_storage(),
            *_identities(),
            *(_role_assignment(grant) for grant in grants()),
            _workspace_reader(),
            *_environment(),
            _collector_job(),
            *(_app(service) for service in SCALING),
        ],
        "outputs": {
            "serviceBusNamespace": {
                "type": "string",
                "value": f"[format('{{0}}.servicebus.windows.net', {_p('serviceBusNamespaceName')})]",
            },
            **{
                f"{service}{output[0].upper()}{output[1:]}": {
                    "type": "string",
                    "value": _expr(_identity_property(f"identity_{service}", output)),
                }
                for service in SERVICES
                for output in ("clientId", "principalId")
            },
        },
    }


def template_json(topology: Topology = TOPOLOGY) -> str:
    return json.dumps(template(topology), indent=2) + "\n"
