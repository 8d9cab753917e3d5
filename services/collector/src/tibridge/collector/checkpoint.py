"""The watermark store: a port and two adapters (a local file, an Azure Blob).

Both are optimistic: `load` remembers the version it read and `save` succeeds only if the stored checkpoint is
still that version (or still absent), so two collectors can never both move the watermark; the loser gets a
`CheckpointConflict`. Beside the watermark a checkpoint keeps `quiet_since`: the time of the newest row any pass
found (or where reading began, before the first), so passes that each last minutes — a CronJob's — can tell when
the source has been silent for a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)

if TYPE_CHECKING:  # the Blob SDK takes half a second to import; a file checkpoint never needs it
    from azure.storage.blob.aio import ContainerClient


class CheckpointStore(Protocol):
    async def load(self) -> datetime | None:
        """The saved watermark (None before the first save); remembers its version (and `quiet_since`)."""
        ...

    @property
    def quiet_since(self) -> datetime | None:
        """What the checkpoint `load` read says of the newest row found (None before the first save)."""
        ...

    async def save(self, watermark: datetime, *, quiet_since: datetime | None = None) -> None:
        """Stores the watermark if nobody else moved it since `load`; raises `CheckpointConflict` otherwise."""
        ...


class CheckpointError(Exception):
    """The checkpoint cannot be read or written; the message says what to fix."""


class CheckpointConflict(CheckpointError):
    """Another collector moved the watermark since this one loaded it."""


@dataclass(frozen=True)
class Checkpoint:
    watermark: datetime
    revision: int  # counts saves, so a rewrite of the same watermark is still a new version
    quiet_since: datetime | None = None

    def encode(self) -> bytes:
        document: dict[str, object] = {
            "watermark": self.watermark.astimezone(UTC).isoformat(),
            "revision": self.revision,
        }
        if self.quiet_since is not None:
            document["quiet_since"] = self.quiet_since.astimezone(UTC).isoformat()
        return json.dumps(document).encode("utf-8")

    @classmethod
    def decode(cls, data: bytes, where: str) -> Checkpoint:
        try:
            document = json.loads(data)
            watermark = datetime.fromisoformat(document["watermark"])
            revision = int(document.get("revision", 0))
            quiet = document.get("quiet_since")
            quiet_since = datetime.fromisoformat(quiet) if quiet is not None else None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"the checkpoint at {where} is not readable; delete it or fix its JSON") from None
        for name, moment in (("watermark", watermark), ("quiet_since", quiet_since)):
            if moment is not None and moment.tzinfo is None:
                raise CheckpointError(f"the checkpoint at {where} has a {name} without a time zone; fix it")
        return cls(watermark.astimezone(UTC), revision, quiet_since.astimezone(UTC) if quiet_since else None)


_CONFLICT = "another collector moved the watermark at {where} since this pass started; run one collector at a time"


class FileCheckpointStore:
    """A JSON file replaced atomically (temp file + rename) under an advisory lock."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock_path = path.with_name(path.name + ".lock")
        self._seen: bytes | None = None
        self._quiet_since: datetime | None = None

    @property
    def quiet_since(self) -> datetime | None:
        return self._quiet_since

    async def load(self) -> datetime | None:
        return await asyncio.to_thread(self._load)

    async def save(self, watermark: datetime, *, quiet_since: datetime | None = None) -> None:
        await asyncio.to_thread(self._save, watermark, quiet_since)

    async def check_writable(self) -> None:
        """Writes and deletes a probe beside the checkpoint (never the checkpoint itself); raises `CheckpointError`
        naming what to fix when that is refused (`tibridge preflight`)."""
        await asyncio.to_thread(self._check_writable)

    def _check_writable(self) -> None:
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, probe = tempfile.mkstemp(prefix=self._path.name, suffix=".probe", dir=self._path.parent)
            os.close(descriptor)
            os.unlink(probe)
        except OSError as error:
            raise CheckpointError(
                f"cannot write beside the checkpoint {self._path}: {error.strerror}; make {self._path.parent} "
                "writable for the collector or change TIBRIDGE_CHECKPOINT_PATH"
            ) from None

    def _load(self) -> datetime | None:
        data = self._read()
        self._seen = data
        if data is None:
            self._quiet_since = None
            return None
        checkpoint = Checkpoint.decode(data, str(self._path))
        self._quiet_since = checkpoint.quiet_since
        return checkpoint.watermark

    def _save(self, watermark: datetime, quiet_since: datetime | None) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self._read()
            if current != self._seen:
                raise CheckpointConflict(_CONFLICT.format(where=self._path))
            revision = Checkpoint.decode(current, str(self._path)).revision + 1 if current else 1
            data = Checkpoint(watermark, revision, quiet_since).encode()
            self._replace(data)
            self._seen, self._quiet_since = data, quiet_since

    def _read(self) -> bytes | None:
        try:
            return self._path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise CheckpointError(f"cannot read the checkpoint {self._path}: {error.strerror}") from None

    def _replace(self, data: bytes) -> None:
        descriptor, temporary = tempfile.mkstemp(prefix=self._path.name, suffix=".tmp", dir=self._path.parent)
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


class BlobCheckpointStore:
    """A small JSON blob written with `If-Match: <etag seen>` (or `If-None-Match: *` when there was none)."""

    def __init__(self, container: ContainerClient, blob_name: str, *, timeout_seconds: float = 30.0) -> None:
        self._container = container
        self._blob = container.get_blob_client(blob_name)
        self._where = f"blob {container.container_name}/{blob_name}"
        self._timeout = timeout_seconds
        self._etag: str | None = None
        self._revision = 0
        self._quiet_since: datetime | None = None

    @property
    def quiet_since(self) -> datetime | None:
        return self._quiet_since

    async def load(self) -> datetime | None:
        try:
            async with asyncio.timeout(self._timeout):
                downloader = await self._blob.download_blob()
                data = await downloader.readall()
        except ResourceNotFoundError:
            self._etag, self._revision, self._quiet_since = None, 0, None
            return None
        except (AzureError, TimeoutError) as error:
            raise CheckpointError(f"cannot read the checkpoint {self._where}: {_summary(error)}") from None
        checkpoint = Checkpoint.decode(data, self._where)
        self._etag, self._revision = downloader.properties.etag, checkpoint.revision
        self._quiet_since = checkpoint.quiet_since
        return checkpoint.watermark

    async def save(self, watermark: datetime, *, quiet_since: datetime | None = None) -> None:
        checkpoint = Checkpoint(watermark, self._revision + 1, quiet_since)
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    result = await self._upload(checkpoint)
                except ResourceNotFoundError:  # the container does not exist yet
                    with contextlib.suppress(ResourceExistsError):
                        await self._container.create_container()
                    result = await self._upload(checkpoint)
        except (ResourceModifiedError, ResourceExistsError):
            raise CheckpointConflict(_CONFLICT.format(where=self._where)) from None
        except (AzureError, TimeoutError) as error:
            raise CheckpointError(f"cannot write the checkpoint {self._where}: {_summary(error)}") from None
        self._etag, self._revision, self._quiet_since = result["etag"], checkpoint.revision, quiet_since

    async def check_writable(self) -> None:
        """As the file store's: a probe blob written and deleted beside the checkpoint."""
        probe = self._container.get_blob_client(f"{self._blob.blob_name}.probe")
        try:
            async with asyncio.timeout(self._timeout):
                try:
                    await probe.upload_blob(b"{}", overwrite=True)
                except ResourceNotFoundError:  # the container does not exist yet; the first save creates it too
                    with contextlib.suppress(ResourceExistsError):
                        await self._container.create_container()
                    await probe.upload_blob(b"{}", overwrite=True)
                await probe.delete_blob()
        except (AzureError, TimeoutError) as error:
            raise CheckpointError(
                f"cannot write to {self._where}'s container: {_summary(error)}; grant the collector's identity "
                "Storage Blob Data Contributor on the container"
            ) from None

    async def _upload(self, checkpoint: Checkpoint) -> dict[str, str]:
        data = checkpoint.encode()
        result: dict[str, str]
        if self._etag is None:
            result = await self._blob.upload_blob(data, overwrite=True, match_condition=MatchConditions.IfMissing)
        else:
            result = await self._blob.upload_blob(
                data, overwrite=True, match_condition=MatchConditions.IfNotModified, etag=self._etag
            )
        return result


def _summary(error: AzureError | TimeoutError) -> str:
    if isinstance(error, TimeoutError):
        return "no answer in time; check the storage account's reachability"
    # The first line only: the rest of an SDK error message repeats request details.
    return str(error.message or type(error).__name__).splitlines()[0]
