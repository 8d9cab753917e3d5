"""`tibridge run --once --bus servicebus`: the three services in one process over Service Bus (the wire-level
double), against the sandbox; ThreatStream ends up exactly as the seeded data says it must."""

from pathlib import Path

from tests.fixtures.sandbox import SandboxFactory
from tests.sbdouble.server import ServiceBusDouble
from tibridge.cli.commands import run_pipeline
from tibridge.cli.demo import reconcile
from tibridge.common.contracts import Envelope, decode
from tibridge.common.settings import BusKind, from_environment
from tibridge.common.topology import (
    INDICATORS_TOPIC,
    PUBLISHER_SUBSCRIPTION,
    SCORED_TOPIC,
    SCORER_SUBSCRIPTION,
    TOPOLOGY,
)
from tibridge.publisher.worker import REJECTED_REASON


async def test_run_once_over_service_bus_reconciles(
    sandbox_factory: SandboxFactory, sb_double: ServiceBusDouble, tmp_path: Path
) -> None:
    async with sandbox_factory(indicators=150, seed=3, anchor=None) as sandbox:  # data up to now
        overrides: dict[str, object] = dict(from_environment(sandbox.env()))
        overrides |= {
            "servicebus_connection_string": sb_double.connection_string,
            "health_port": 0,
            "checkpoint_path": str(tmp_path / "checkpoint.json"),
            "publisher_mode": "direct",
        }
        code = await run_pipeline(bus=BusKind.SERVICEBUS, once=True, since=None, values=overrides)
        expected = sandbox.expected()
        stats = sandbox.stats()
        threatstream = sandbox.reconcile(expected)

    assert code == 0
    assert stats["loganalytics"]["rows_returned"] > 0
    assert expected.active
    assert reconcile(threatstream, stats) == []
    for topic in TOPOLOGY.topics:
        for subscription in topic.subscriptions:
            assert sb_double.depth(topic.name, subscription.name) == 0
    assert sb_double.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=True) == 0
    # Dead-lettered only what ThreatStream's whitelist refuses, each with ThreatStream's reason.
    refused = [
        (letter.dead_letter_reason, _value(letter.body))
        for letter in sb_double.dead_letters(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION)
    ]
    assert {value for _, value in refused} == set(expected.rejected)
    assert {reason for reason, _ in refused} <= {REJECTED_REASON}


def _value(body: bytes) -> str:
    envelope = decode(body)
    assert isinstance(envelope, Envelope)
    return envelope.payload.observable.value
