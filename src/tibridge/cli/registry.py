"""The services of this installation: each service's package exports its own `SPEC`; this is the one place
they are collected. Every command, `config check`, the settings table and the all-in-one composition read it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from tibridge.collector.app import SPEC as COLLECTOR
from tibridge.common.runtime import ServiceName, ServiceSpec
from tibridge.publisher.app import SPEC as PUBLISHER
from tibridge.scorer.app import SPEC as SCORER

# In pipeline order: the all-in-one process builds them, and the settings table lists them, this way.
SERVICES: Mapping[ServiceName, ServiceSpec[Any]] = MappingProxyType(
    {spec.name: spec for spec in (COLLECTOR, SCORER, PUBLISHER)}
)
assert set(SERVICES) == set(ServiceName), "every ServiceName needs its package's SPEC here"
