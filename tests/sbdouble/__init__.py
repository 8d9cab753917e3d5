"""A wire-level Service Bus test double: the unmodified azure-servicebus SDK talks AMQP 1.0 to it.

It reads the official emulator's `config.json` (topics, subscriptions, SQL rules, lock durations, max
delivery counts, duplicate detection) and serves it on 127.0.0.1 with an emulator connection string. Run
it in-process (`ServiceBusDouble`) or as a process: `python -m tests.sbdouble --port P [--config PATH]`.
"""

from tests.sbdouble.config import ConfigError, NamespaceConfig, load_config, parse_config
from tests.sbdouble.server import InspectedMessage, ServiceBusDouble

__all__ = ["ConfigError", "InspectedMessage", "NamespaceConfig", "ServiceBusDouble", "load_config", "parse_config"]
