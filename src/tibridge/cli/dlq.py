"""`tibridge dlq`: look at dead-lettered messages and send them round again once their cause is fixed."""

from __future__ import annotations

import contextlib

import typer

from tibridge.common.bus.port import Bus, OutgoingMessage, ReceivedMessage
from tibridge.common.runtime import bus_from_settings
from tibridge.common.settings import ServiceSettings, load_settings
from tibridge.common.topology import TOPOLOGY

_RECEIVE_WAIT_SECONDS = 5.0


def topic_of(subscription: str) -> str:
    for topic in TOPOLOGY.topics:
        if any(sub.name == subscription for sub in topic.subscriptions):
            return topic.name
    raise typer.BadParameter(f"no subscription named {subscription!r}")


def replay_id(message: ReceivedMessage) -> str:
    """A new id, stable per dead-lettered message, so duplicate detection does not swallow the replay
    but a replay repeated after a crash is still dropped."""
    return f"{message.message_id}.replay{message.sequence_number}"


def describe(message: ReceivedMessage) -> str:
    kind = message.application_properties.get("type", "?")
    return (
        f"#{message.sequence_number} {message.message_id} {kind} enqueued {message.enqueued_time:%Y-%m-%dT%H:%M:%SZ} "
        f"deliveries {message.delivery_count}: {message.dead_letter_reason or '?'} — "
        f"{message.dead_letter_description or ''}"
    )


async def _open_bus(resources: contextlib.AsyncExitStack) -> Bus:
    return await bus_from_settings(load_settings(ServiceSettings, bus="servicebus"), resources)


async def list_dead_letters(subscription: str, limit: int) -> int:
    topic = topic_of(subscription)
    async with contextlib.AsyncExitStack() as resources:
        bus = await _open_bus(resources)
        async with bus.receiver(topic, subscription, dead_letter=True) as receiver:
            messages = await receiver.receive(limit, _RECEIVE_WAIT_SECONDS)
            for message in messages:
                typer.echo(describe(message))
            for message in messages:
                await receiver.abandon(message)
    typer.echo(f"{len(messages)} dead-lettered message(s) shown from {topic}/{subscription}")
    return 0


async def replay_dead_letters(subscription: str, limit: int, reason: str | None) -> int:
    topic = topic_of(subscription)
    replayed = skipped = 0
    async with contextlib.AsyncExitStack() as resources:
        bus = await _open_bus(resources)
        async with bus.receiver(topic, subscription, dead_letter=True) as receiver:
            while replayed + skipped < limit:
                batch = await receiver.receive(min(100, limit - replayed - skipped), _RECEIVE_WAIT_SECONDS)
                if not batch:
                    break
                for message in batch:
                    if reason is not None and message.dead_letter_reason != reason:
                        await receiver.abandon(message)
                        skipped += 1
                        continue
                    await bus.publish(
                        topic,
                        [
                            OutgoingMessage(
                                body=message.body,
                                message_id=replay_id(message),
                                application_properties=dict(message.application_properties),
                            )
                        ],
                    )
                    await receiver.complete(message)
                    replayed += 1
    typer.echo(f"replayed {replayed} message(s) to topic {topic}; left {skipped} with other reasons")
    return 0
