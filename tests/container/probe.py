"""What the container test reads from inside the stack, as one JSON object on stdout.

Runs as `python - SANDBOX_URL EXPECTED_QUERY SERVICEBUS_CONNECTION_STRING` in the sandbox's container (its
image has tibridge-common, so the Service Bus adapter), where the sandbox's loopback-only API and the bus are
reachable.

Standalone on purpose: the image has none of the tests, only the sandbox and tibridge-common.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import urllib.request
from collections import Counter
from typing import Any

from tibridge.common.bus.servicebus import ServiceBusBus
from tibridge.common.topology import TOPOLOGY

DEAD_LETTER_RECEIVE_SECONDS = 2.0
HTTP_TIMEOUT_SECONDS = 30


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310 - loopback http
        return json.load(response)


async def _bus_state(connection_string: str) -> dict[str, dict[str, Any]]:
    """Per subscription: messages waiting (0 or 1: a peek), and the messages in its dead-letter queue by reason."""
    state: dict[str, dict[str, Any]] = {}
    bus = ServiceBusBus.from_connection_string(connection_string)
    try:
        for topic in TOPOLOGY.topics:
            for subscription in topic.subscriptions:
                entity = f"{topic.name}/{subscription.name}"
                waiting = await bus.has_pending(topic.name, subscription.name)
                async with bus.receiver(topic.name, subscription.name, dead_letter=True) as receiver:
                    dead = await receiver.receive(1000, DEAD_LETTER_RECEIVE_SECONDS)
                    for message in dead:
                        await receiver.abandon(message)
                reasons = Counter(str(message.dead_letter_reason) for message in dead)
                state[entity] = {"pending": int(waiting), "dead_lettered": len(dead), "reasons": dict(reasons)}
    finally:
        with contextlib.suppress(Exception):
            await bus.close()
    return state


def main() -> None:
    base_url, expected_query, connection_string = sys.argv[1:4]
    report = {
        "stats": _get(f"{base_url}/_sandbox/stats"),
        "objects": _get(f"{base_url}/_sandbox/threatstream/objects")["objects"],
        "expected": _get(f"{base_url}/_sandbox/expected?{expected_query}")["threatstream"],
        "reconcile": _get(f"{base_url}/_sandbox/reconcile?{expected_query}"),
        "bus": asyncio.run(_bus_state(connection_string)),
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
