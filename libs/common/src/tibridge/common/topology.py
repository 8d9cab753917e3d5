"""The bus topology, defined once: topics, subscriptions, their rules and limits.

The in-memory bus builds its entities from it, and the Service Bus emulator's `config.json`
(`servicebus/config.json`, mounted by docker-compose and read by the wire-level test double) is generated
from it; a test fails when the checked-in file drifts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from tibridge.common.contracts import Verdict

INDICATORS_TOPIC = "indicators"
SCORED_TOPIC = "scored"
SCORER_SUBSCRIPTION = "scorer"
PUBLISHER_SUBSCRIPTION = "publisher"
EMULATOR_NAMESPACE = "sbemulatorns"


@dataclass(frozen=True)
class PropertyIn:
    """A subscription rule: keep messages whose application property is one of the values."""

    name: str
    property_name: str
    values: tuple[str, ...]

    @property
    def sql(self) -> str:
        quoted = ",".join("'" + value.replace("'", "''") + "'" for value in self.values)
        return f"{self.property_name} IN ({quoted})"

    def matches(self, properties: Mapping[str, object]) -> bool:
        return properties.get(self.property_name) in self.values


@dataclass(frozen=True)
class SubscriptionSpec:
    name: str
    lock_duration: timedelta = timedelta(minutes=1)
    max_delivery_count: int = 5
    message_ttl: timedelta = timedelta(hours=1)
    rule: PropertyIn | None = None

    def accepts(self, properties: Mapping[str, object]) -> bool:
        return self.rule is None or self.rule.matches(properties)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    subscriptions: tuple[SubscriptionSpec, ...]
    message_ttl: timedelta = timedelta(hours=1)
    duplicate_detection_window: timedelta = timedelta(minutes=20)

    def subscription(self, name: str) -> SubscriptionSpec:
        for spec in self.subscriptions:
            if spec.name == name:
                return spec
        raise KeyError(f"topic {self.name!r} has no subscription {name!r}")


@dataclass(frozen=True)
class Topology:
    topics: tuple[TopicSpec, ...]

    def topic(self, name: str) -> TopicSpec:
        for spec in self.topics:
            if spec.name == name:
                return spec
        raise KeyError(f"no topic {name!r}; known: {', '.join(t.name for t in self.topics)}")


TOPOLOGY = Topology(
    topics=(
        TopicSpec(INDICATORS_TOPIC, subscriptions=(SubscriptionSpec(SCORER_SUBSCRIPTION),)),
        TopicSpec(
            SCORED_TOPIC,
            subscriptions=(
                SubscriptionSpec(
                    PUBLISHER_SUBSCRIPTION,
                    rule=PropertyIn("publish-or-expire", "verdict", (str(Verdict.PUBLISH), str(Verdict.EXPIRE))),
                ),
            ),
        ),
    )
)


def iso_duration(value: timedelta) -> str:
    """The ISO 8601 form the emulator's config uses (PT1M, PT20M, PT1H)."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours}H" if hours else "", f"{minutes}M" if minutes else "", f"{seconds}S" if seconds else ""]
    return "PT" + ("".join(parts) or "0S")


def emulator_config(topology: Topology = TOPOLOGY) -> dict[str, object]:
    return {
        "UserConfig": {
            "Namespaces": [
                {
                    "Name": EMULATOR_NAMESPACE,
                    "Queues": [],
                    "Topics": [
                        {
                            "Name": topic.name,
                            "Properties": {
                                "DefaultMessageTimeToLive": iso_duration(topic.message_ttl),
                                "DuplicateDetectionHistoryTimeWindow": iso_duration(topic.duplicate_detection_window),
                                "RequiresDuplicateDetection": True,
                            },
                            "Subscriptions": [
                                {
                                    "Name": sub.name,
                                    "Properties": {
                                        "DeadLetteringOnMessageExpiration": True,
                                        "DefaultMessageTimeToLive": iso_duration(sub.message_ttl),
                                        "LockDuration": iso_duration(sub.lock_duration),
                                        "MaxDeliveryCount": sub.max_delivery_count,
                                    },
                                    "Rules": [
                                        {
                                            "Name": sub.rule.name,
                                            "Properties": {
                                                "FilterType": "Sql",
                                                "SqlFilter": {"SqlExpression": sub.rule.sql},
                                            },
                                        }
                                    ]
                                    if sub.rule
                                    else [],
                                }
                                for sub in topic.subscriptions
                            ],
                        }
                        for topic in topology.topics
                    ],
                }
            ],
            "Logging": {"Type": "File"},
        }
    }


def emulator_config_json(topology: Topology = TOPOLOGY) -> str:
    return json.dumps(emulator_config(topology), indent=2) + "\n"
