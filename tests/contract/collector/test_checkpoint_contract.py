"""One contract for every checkpoint store: the file store, and the blob store against Azurite.

Each test makes stores through `open_store()`; two stores from one factory are two collectors sharing the same
checkpoint.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob.aio import BlobServiceClient

from tibridge.collector.checkpoint import (
    BlobCheckpointStore,
    CheckpointConflict,
    CheckpointError,
    CheckpointStore,
    FileCheckpointStore,
)

WATERMARK = datetime(2026, 11, 1, 6, 0, 0, 123456, tzinfo=UTC)


@dataclass
class StoreRig:
    open_store: Callable[[], CheckpointStore]
    corrupt: Callable[[bytes], Awaitable[None]]  # overwrites the stored checkpoint behind the stores' backs


@pytest.fixture(params=["file", pytest.param("blob", marks=pytest.mark.azurite)])
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreRig]:
    if request.param == "file":
        path = tmp_path / "state" / "collector-checkpoint.json"

        async def corrupt_file(data: bytes) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

        yield StoreRig(lambda: FileCheckpointStore(path), corrupt_file)
        return
    connection_string: str = request.getfixturevalue("azurite")
    container_name = f"checkpoints-{uuid.uuid4().hex[:12]}"  # a container per test, created on first save
    async with contextlib.AsyncExitStack() as clients:

        def open_blob_store() -> CheckpointStore:
            service = BlobServiceClient.from_connection_string(connection_string, retry_total=0)
            clients.push_async_callback(service.close)
            return BlobCheckpointStore(service.get_container_client(container_name), "collector.json")

        async def corrupt_blob(data: bytes) -> None:
            async with BlobServiceClient.from_connection_string(connection_string) as service:
                container = service.get_container_client(container_name)
                with contextlib.suppress(Exception):
                    await container.create_container()
                await container.upload_blob("collector.json", data, overwrite=True)

        yield StoreRig(open_blob_store, corrupt_blob)


async def test_nothing_is_stored_at_first(rig: StoreRig) -> None:
    assert await rig.open_store().load() is None


async def test_a_saved_watermark_is_what_the_next_collector_loads(rig: StoreRig) -> None:
    store = rig.open_store()
    assert await store.load() is None
    await store.save(WATERMARK)
    await store.save(WATERMARK + timedelta(hours=6))  # the same collector keeps moving it
    assert await rig.open_store().load() == WATERMARK + timedelta(hours=6)


async def test_watermarks_come_back_in_utc(rig: StoreRig) -> None:
    store = rig.open_store()
    await store.load()
    await store.save(WATERMARK.astimezone(timezone(timedelta(hours=-5))))
    loaded = await rig.open_store().load()
    assert loaded == WATERMARK
    assert loaded is not None
    assert loaded.utcoffset() == timedelta(0)


async def test_two_collectors_cannot_both_move_the_watermark(rig: StoreRig) -> None:
    first, second = rig.open_store(), rig.open_store()
    await first.load()
    await first.save(WATERMARK)
    assert await first.load() == WATERMARK
    assert await second.load() == WATERMARK
    await first.save(WATERMARK + timedelta(hours=1))
    with pytest.raises(CheckpointConflict, match="another collector moved the watermark"):
        await second.save(WATERMARK + timedelta(hours=2))
    assert await rig.open_store().load() == WATERMARK + timedelta(hours=1)
    # The loser starts over from what is stored now, and then may save.
    assert await second.load() == WATERMARK + timedelta(hours=1)
    await second.save(WATERMARK + timedelta(hours=2))
    assert await rig.open_store().load() == WATERMARK + timedelta(hours=2)


async def test_two_first_runs_cannot_both_create_the_checkpoint(rig: StoreRig) -> None:
    first, second = rig.open_store(), rig.open_store()
    assert await first.load() is None
    assert await second.load() is None
    await second.save(WATERMARK)
    with pytest.raises(CheckpointConflict):
        await first.save(WATERMARK + timedelta(hours=1))
    assert await rig.open_store().load() == WATERMARK


async def test_rewriting_the_same_watermark_is_still_a_new_version(rig: StoreRig) -> None:
    first, second = rig.open_store(), rig.open_store()
    await first.load()
    await first.save(WATERMARK)
    await second.load()
    await first.save(WATERMARK)  # same value, new revision
    with pytest.raises(CheckpointConflict):
        await second.save(WATERMARK)


async def test_saving_without_loading_never_overwrites_a_stored_checkpoint(rig: StoreRig) -> None:
    store = rig.open_store()
    await store.load()
    await store.save(WATERMARK)
    with pytest.raises(CheckpointConflict):
        await rig.open_store().save(WATERMARK + timedelta(days=1))


@pytest.mark.parametrize(
    "data", [b"not json", b'{"watermark": "yesterday"}', b"[]", b'{"watermark": "2026-11-01T00:00:00"}']
)
async def test_an_unreadable_checkpoint_is_a_clear_error(rig: StoreRig, data: bytes) -> None:
    await rig.corrupt(data)
    with pytest.raises(CheckpointError, match=r"checkpoint at .* (is not readable|has a watermark without)"):
        await rig.open_store().load()


async def test_an_unreachable_blob_endpoint_is_a_clear_error() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = f"DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:{port}/a;"
    async with BlobServiceClient.from_connection_string(closed, retry_total=0) as service:
        store = BlobCheckpointStore(service.get_container_client("c"), "collector.json", timeout_seconds=5)
        with pytest.raises(CheckpointError, match=r"cannot read the checkpoint blob c/collector\.json"):
            await store.load()
        with pytest.raises(CheckpointError, match="cannot write the checkpoint"):
            await store.save(WATERMARK)
