"""The entity definitions of the official emulator's `config.json`, as the double reads them.

Only what the double implements is accepted: topics with subscriptions, rules in the SQL forms
`prop IN ('a','b')` and `prop = 'a'`; anything else is refused with a message saying what to change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path("servicebus/config.json")

_DURATION = re.compile(
    r"^P(?:(?P<days>\d+)D)?(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$"
)
_IDENTIFIER = r"(?P<name>(?:user\.)?[A-Za-z_][A-Za-z0-9_\-]*)"
_LITERAL = r"'(?:[^']|'')*'"
_IN_FILTER = re.compile(
    rf"^\s*{_IDENTIFIER}\s+IN\s*\(\s*(?P<values>{_LITERAL}(?:\s*,\s*{_LITERAL})*)\s*\)\s*$", re.IGNORECASE
)
_EQUALS_FILTER = re.compile(rf"^\s*{_IDENTIFIER}\s*=\s*(?P<values>{_LITERAL})\s*$")


class ConfigError(ValueError):
    """The config file asks for something the double cannot do, or is not an emulator config."""


@dataclass(frozen=True)
class PropertyFilter:
    """`property IN (values)`: true when the message's application property is one of the values."""

    property_name: str
    values: frozenset[str]

    def matches(self, application_properties: Mapping[str, object]) -> bool:
        return application_properties.get(self.property_name) in self.values


@dataclass
class SubscriptionConfig:
    name: str
    lock_duration: float
    max_delivery_count: int
    filters: tuple[PropertyFilter, ...] = ()

    def accepts(self, application_properties: Mapping[str, object]) -> bool:
        """No rule accepts everything (the service's implicit `$Default` rule); several rules are or-ed."""
        return not self.filters or any(rule.matches(application_properties) for rule in self.filters)


@dataclass
class TopicConfig:
    name: str
    duplicate_detection_window: float | None
    subscriptions: dict[str, SubscriptionConfig] = field(default_factory=dict)


@dataclass
class NamespaceConfig:
    topics: dict[str, TopicConfig]


def parse_duration(text: str) -> float:
    """An ISO 8601 duration as the emulator writes it (PT1M, PT20M, PT1H, P1D) in seconds."""
    match = _DURATION.match(text)
    if match is None or text in ("P", "PT"):
        raise ConfigError(f"{text!r} is not an ISO 8601 duration such as PT1M or PT20M")
    units = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
    return sum(float(value) * units[unit] for unit, value in match.groupdict().items() if value)


def parse_sql_filter(expression: str) -> PropertyFilter:
    match = _IN_FILTER.match(expression) or _EQUALS_FILTER.match(expression)
    if match is None:
        raise ConfigError(
            f"SQL filter {expression!r} is not supported by the Service Bus double; "
            "write it as prop IN ('a','b') or prop = 'a'"
        )
    values = re.findall(_LITERAL, match["values"])
    return PropertyFilter(
        property_name=match["name"].removeprefix("user."),
        values=frozenset(value[1:-1].replace("''", "'") for value in values),
    )


def load_config(path: Path = DEFAULT_CONFIG_PATH) -> NamespaceConfig:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no emulator config at {path}; pass --config with the path to config.json") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None
    return parse_config(document)


def parse_config(document: Mapping[str, Any]) -> NamespaceConfig:
    try:
        namespaces = document["UserConfig"]["Namespaces"]
    except (KeyError, TypeError):
        raise ConfigError(
            "the config has no UserConfig.Namespaces; is it the Service Bus emulator's config.json?"
        ) from None
    if len(namespaces) != 1:
        raise ConfigError(f"the emulator config must define exactly one namespace, not {len(namespaces)}")
    namespace = namespaces[0]
    if namespace.get("Queues"):
        raise ConfigError("the Service Bus double serves topics only; remove the Queues from the config")
    topics = [_topic(topic) for topic in namespace.get("Topics", [])]
    return NamespaceConfig(topics={topic.name: topic for topic in topics})


def _topic(document: Mapping[str, Any]) -> TopicConfig:
    name = str(document["Name"])
    properties = document.get("Properties", {})
    window = (
        parse_duration(properties.get("DuplicateDetectionHistoryTimeWindow", "PT10M"))
        if properties.get("RequiresDuplicateDetection", False)
        else None
    )
    subscriptions = [_subscription(name, sub) for sub in document.get("Subscriptions", [])]
    return TopicConfig(name=name, duplicate_detection_window=window, subscriptions={s.name: s for s in subscriptions})


def _subscription(topic: str, document: Mapping[str, Any]) -> SubscriptionConfig:
    name = str(document["Name"])
    properties = document.get("Properties", {})
    filters = []
    for rule in document.get("Rules", []):
        rule_properties = rule.get("Properties", {})
        if rule_properties.get("FilterType") != "Sql":
            raise ConfigError(
                f"rule {rule.get('Name')!r} of {topic}/{name} has filter type "
                f"{rule_properties.get('FilterType')!r}; the Service Bus double supports Sql filters only"
            )
        filters.append(parse_sql_filter(rule_properties["SqlFilter"]["SqlExpression"]))
    return SubscriptionConfig(
        name=name,
        lock_duration=parse_duration(properties.get("LockDuration", "PT1M")),
        max_delivery_count=int(properties.get("MaxDeliveryCount", 10)),
        filters=tuple(filters),
    )
