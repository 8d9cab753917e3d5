"""End to end over the wire: the unmodified azure-servicebus SDK against the Service Bus double, Graph from
the sandbox; the publisher's subscription rule lets only `publish` and `expire` through."""

from __future__ import annotations

from tests.fixtures.sandbox import SandboxFactory
from tests.fixtures.scorer import cases_from, drain_scored, needs_lookup, running_scorer, until
from tests.sbdouble import ServiceBusDouble
from tibridge.common.bus.servicebus import ServiceBusBus
from tibridge.common.contracts import Verdict
from tibridge.common.topology import INDICATORS_TOPIC, PUBLISHER_SUBSCRIPTION, SCORED_TOPIC, SCORER_SUBSCRIPTION


async def test_the_scorer_scores_every_indicator_over_service_bus(
    sb_double: ServiceBusDouble, sandbox_factory: SandboxFactory
) -> None:
    bus = ServiceBusBus.from_connection_string(sb_double.connection_string, operation_timeout=15)
    try:
        async with sandbox_factory(indicators=80) as server:
            cases = cases_from(server.expected(), repeated_share=0.3)
            async with running_scorer(server.endpoints.graph, bus) as scorer:
                await scorer.send(case.indicator for case in cases)
                await until(lambda: scorer.scored == len(cases), seconds=60)
                await until(lambda: sb_double.depth(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) == 0)
            graph = server.stats()["graph"]
        forwarded = await drain_scored(bus, PUBLISHER_SUBSCRIPTION)
    finally:
        await bus.close()

    expected = {
        case.indicator.indicator_id: (case.verdict, case.reason)
        for case in cases
        if case.verdict in (Verdict.PUBLISH, Verdict.EXPIRE)
    }
    assert {item.indicator.indicator_id: (item.verdict, item.reason) for item in forwarded} == expected
    assert sb_double.dead_letters(INDICATORS_TOPIC, SCORER_SUBSCRIPTION) == []
    assert sb_double.depth(SCORED_TOPIC, PUBLISHER_SUBSCRIPTION) == 0
    unique = len({case.indicator.observable.key for case in cases if needs_lookup(case)})
    # Over the wire messages arrive in prefetch-sized receives, so batches may leave part-full; the
    # request economy is asserted on the memory bus, the once-per-observable lookup holds here too.
    assert graph["lookups"] == unique
