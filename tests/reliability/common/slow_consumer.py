"""A consumer process for the SIGTERM tests: `python -m tests.reliability.common.slow_consumer`.

It serves one `Consumer` on indicators/scorer through `run_service`, with the bus the TIBRIDGE_* environment
names and at most TIBRIDGE_SCORER_MAX_IN_FLIGHT messages in hand. Its handler spends `--work-seconds` on
odd-numbered indicators and `--stuck-seconds` on even-numbered ones, and prints a line per step on stdout
(`received <id>`, `completing <id>`, `completed <id>`), so a test knows when it is mid-work and what was
completed. On the in-memory bus it first publishes `--messages` itself and, at exit, prints
`left <json list of ids>` and `dead <json list of ids>`: what is still on the subscription and its DLQ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys

from pydantic import Field

from tests.fixtures.messages import collected_envelope, consumer_options
from tibridge.common.bus.memory import MemoryBus
from tibridge.common.bus.port import Bus
from tibridge.common.clock import Clock
from tibridge.common.consumer import Consumer, InFlight
from tibridge.common.contracts import IndicatorCollected
from tibridge.common.producer import message_for
from tibridge.common.runtime import Build, Service, ServiceName, ServiceSpec, run_service
from tibridge.common.settings import Section, ServiceSettings
from tibridge.common.topology import INDICATORS_TOPIC, SCORER_SUBSCRIPTION

RECEIVE_WAIT_SECONDS = 0.2


def say(*words: str) -> None:
    print(*words, flush=True)


class InHand(Section):
    max_in_flight: int = Field(64, ge=1, description="Messages the slow consumer holds at most.")


class SlowConsumerSettings(ServiceSettings):
    scorer: InHand


class SlowHandler:
    """Settles by itself (a manual handler), so the test sees when each message is completed."""

    payload_type = IndicatorCollected

    def __init__(self, work_seconds: float, stuck_seconds: float) -> None:
        self._work_seconds = work_seconds
        self._stuck_seconds = stuck_seconds

    async def hold(self, item: InFlight[IndicatorCollected]) -> None:
        message_id = item.message.message_id
        say("received", message_id)
        number = int(item.payload.indicator_id.rsplit("-", 1)[1])
        await asyncio.sleep(self._work_seconds if number % 2 else self._stuck_seconds)
        say("completing", message_id)
        await item.complete()
        say("completed", message_id)

    async def flush(self) -> None:
        return None

    async def probe(self) -> bool:
        return True


async def report_leftovers(bus: MemoryBus) -> None:
    for label, dead_letter in (("left", False), ("dead", True)):
        async with bus.receiver(INDICATORS_TOPIC, SCORER_SUBSCRIPTION, dead_letter=dead_letter) as receiver:
            messages = await receiver.receive(10_000, 0.01)
        say(label, json.dumps(sorted(message.message_id for message in messages)))


def builder(messages: int, work_seconds: float, stuck_seconds: float) -> Build[SlowConsumerSettings]:
    async def build(
        settings: SlowConsumerSettings, bus: Bus, resources: contextlib.AsyncExitStack, clock: Clock
    ) -> Service:
        if isinstance(bus, MemoryBus):
            envelopes = [collected_envelope(number) for number in range(1, messages + 1)]
            await bus.publish(INDICATORS_TOPIC, [message_for(envelope) for envelope in envelopes])
            resources.push_async_callback(report_leftovers, bus)
        options = consumer_options(
            max_in_flight=settings.scorer.max_in_flight,
            max_concurrency=settings.scorer.max_in_flight,
            receive_wait_seconds=RECEIVE_WAIT_SECONDS,
            shutdown_grace_seconds=settings.shutdown_grace_seconds,
        )
        consumer = Consumer(
            bus, INDICATORS_TOPIC, SCORER_SUBSCRIPTION, SlowHandler(work_seconds, stuck_seconds), options, clock
        )
        return Service([consumer])

    return build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=0, help="messages to publish first (memory bus only)")
    parser.add_argument("--work-seconds", type=float, required=True, help="handling time of odd-numbered indicators")
    parser.add_argument("--stuck-seconds", type=float, required=True, help="handling time of even-numbered ones")
    arguments = parser.parse_args()
    build = builder(arguments.messages, arguments.work_seconds, arguments.stuck_seconds)
    code = asyncio.run(run_service(ServiceSpec(ServiceName.SCORER, SlowConsumerSettings, build)))
    say("exit", str(code))
    return code


if __name__ == "__main__":
    sys.exit(main())
