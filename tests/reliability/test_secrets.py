"""Issue 13.6: no secret reaches any output — logs, spans, metrics, dead-letter queues, dry-run files, checkpoints
or exception text — not even URL-encoded or in base64.

Distinctive values for each secret tibridge holds: the Graph client secret (AZURE_CLIENT_SECRET, which
DefaultAzureCredential reads itself), the ThreatStream API key, the Service Bus key (inside its connection string)
and the storage account key (inside the checkpoint's connection string; an Azurite of its own has an account
with that key). `tibridge run --once` runs as a process with DEBUG logging and the OpenTelemetry console
exporters, on the happy path with each secret in use, as a dry run, and on failing paths: ThreatStream refusing
the key (401), 5xx and hangs past the client timeouts, a token request that cannot reach its authority, and a
storage account refusing the key. Every byte each run leaves is scanned.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from azure.storage.blob.aio import BlobServiceClient

from tests.fixtures.azurite import azurite_missing_reason, connection_string, start_azurite, stop_azurite
from tests.fixtures.runtime import free_port
from tests.fixtures.sandbox import SandboxFactory
from tests.reliability.figures import Figure, Figures
from tests.reliability.pipeline import DIRECT, ROOT, SUBSCRIPTIONS, add_poison, environment, values_for
from tests.sbdouble import ServiceBusDouble
from tibridge.sandbox import SandboxServer

pytestmark = pytest.mark.usefixtures("restored_logging")

RUN_SECONDS = 300.0
GRAPH_CLIENT_SECRET = "tbGRAPH~cl1ent.Secret_5e7a9c1b3d"
THREATSTREAM_KEY = "tbTS4pik3y9f8e7d6c5b4a3f2e1d0c9b"
WRONG_THREATSTREAM_KEY = "tbTSwr0ngk3y1a2b3c4d5e6f7a8b9c0d"
SERVICE_BUS_KEY = "tbSB/k3y+Zm9vYmFy9x8w7v6u5t4s3r2q1p0o="
STORAGE_ACCOUNT = "tbleak"
STORAGE_KEY = base64.b64encode(b"tbSTORAGE-account-key-3f1e5d7c9b").decode()
WRONG_STORAGE_KEY = base64.b64encode(b"tbSTORAGE-wrong-key-8a6c4e2f0d1b").decode()
SECRETS = {
    "Graph client secret": GRAPH_CLIENT_SECRET,
    "ThreatStream API key": THREATSTREAM_KEY,
    "wrong ThreatStream API key": WRONG_THREATSTREAM_KEY,
    "Service Bus key": SERVICE_BUS_KEY,
    "storage account key": STORAGE_KEY,
    "wrong storage account key": WRONG_STORAGE_KEY,
}
TELEMETRY = {
    "TIBRIDGE_LOG_LEVEL": "DEBUG",
    "OTEL_TRACES_EXPORTER": "console",
    "OTEL_METRICS_EXPORTER": "console",
    "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    # Present in every run, whichever credential it uses: DefaultAzureCredential reads it from here.
    "AZURE_CLIENT_ID": "6f1c2a9e-0000-4000-8000-00000000c11e",
    "AZURE_TENANT_ID": "6f1c2a9e-0000-4000-8000-0000000071e7",
    "AZURE_CLIENT_SECRET": GRAPH_CLIENT_SECRET,
}


def forms(secret: str) -> dict[str, bytes]:
    """The secret as it could leak: itself, URL-encoded, in base64, and its middle alone (a truncated message)."""
    raw = secret.encode()
    return {
        "as is": raw,
        "URL-encoded": quote(secret, safe="").encode(),
        "form-encoded": quote_plus(secret).encode(),
        "base64": base64.b64encode(raw),
        "base64url": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "its middle": raw[len(raw) // 4 : len(raw) // 4 + 16],
    }


def leaks_in(outputs: Mapping[str, bytes]) -> list[str]:
    found = []
    for where, data in outputs.items():
        for name, secret in SECRETS.items():
            for form, needle in forms(secret).items():
                if needle in data:
                    found.append(f"the {name} ({form}) in {where}")
    return found


@dataclass
class Scanned:
    """Every byte one run left: its output, and what it wrote elsewhere."""

    name: str
    code: int | None = None
    outputs: dict[str, bytes] = field(default_factory=dict)


async def tibridge_run_once(
    name: str, values: Mapping[str, Any], *, bus: str = "memory", extra_env: Mapping[str, str] | None = None
) -> Scanned:
    env = {**environment(values), **TELEMETRY, **(extra_env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tibridge.cli",
        "run",
        "--once",
        "--bus",
        bus,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), RUN_SECONDS)
    return Scanned(
        name, process.returncode, {f"{name}: stdout (spans, metrics)": stdout, f"{name}: stderr (logs)": stderr}
    )


@contextlib.contextmanager
def azurite_with_our_account(tmp_path: Path) -> Iterator[str]:
    """An Azurite of its own whose one account has the distinctive key; its connection string."""
    reason = azurite_missing_reason()
    if reason is not None:
        pytest.skip(reason)
    workdir = tmp_path / "azurite"
    workdir.mkdir()
    process, port = start_azurite(workdir, {"AZURITE_ACCOUNTS": f"{STORAGE_ACCOUNT}:{STORAGE_KEY}"})
    try:
        yield connection_string(port, STORAGE_ACCOUNT, STORAGE_KEY)
    finally:
        stop_azurite(process)


async def blob_contents(storage: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    async with BlobServiceClient.from_connection_string(storage) as service:
        async for container in service.list_containers():
            client = service.get_container_client(container.name)
            async for blob in client.list_blobs():
                data = await (await client.download_blob(blob.name)).readall()
                found[f"checkpoint blob {container.name}/{blob.name}"] = data
    return found


def dead_letters(double: ServiceBusDouble) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for topic, sub in SUBSCRIPTIONS:
        for message in double.dead_letters(topic, sub):
            text = f"{message.dead_letter_reason}\n{message.dead_letter_description}\n{message.application_properties}"
            found[f"dead letter {topic}/{sub} #{message.sequence_number}"] = message.body + text.encode()
    return found


def files_under(directory: Path) -> dict[str, bytes]:
    return {f"file {path.name}": path.read_bytes() for path in directory.rglob("*") if path.is_file()}


@contextlib.asynccontextmanager
async def sandbox_taking_our_key(sandbox_factory: SandboxFactory, **faults: Any) -> AsyncIterator[SandboxServer]:
    async with sandbox_factory(
        indicators=150, seed=61, anchor=None, threatstream_api_key=THREATSTREAM_KEY, **faults
    ) as s:
        yield s


def service_bus_connection(double: ServiceBusDouble) -> str:
    return (
        f"Endpoint=sb://127.0.0.1:{double.port};SharedAccessKeyName=RootManageSharedAccessKey;"
        f"SharedAccessKey={SERVICE_BUS_KEY};UseDevelopmentEmulator=true;"
    )


async def test_no_secret_reaches_any_output_on_any_path(
    sandbox_factory: SandboxFactory, sb_double: ServiceBusDouble, tmp_path: Path, figures: Figures
) -> None:
    runs: list[Scanned] = []
    with azurite_with_our_account(tmp_path) as storage:
        # 1. Every secret in use: Service Bus, the blob checkpoint, ThreatStream; mild faults; a value ThreatStream
        #    refuses, so the dead-letter queue holds a description.
        faults = {"graph": {"p429": 0.05, "p500": 0.05}, "threatstream": {"p503": 0.1}}
        async with sandbox_taking_our_key(sandbox_factory, faults=faults) as server:
            add_poison(server, server.expected(), 1, seed=61)
            values = values_for(
                server,
                tmp_path / "unused.json",
                DIRECT,
                threatstream_api_key=THREATSTREAM_KEY,
                servicebus_connection_string=service_bus_connection(sb_double),
                checkpoint_store="blob",
                checkpoint_connection_string=storage,
                checkpoint_container=f"secrets-{uuid.uuid4().hex[:8]}",
            )
            run = await tibridge_run_once("every secret in use", values, bus="servicebus")
        run.outputs |= dead_letters(sb_double) | await blob_contents(storage)
        runs.append(run)
        assert run.code == 0, run.outputs["every secret in use: stderr (logs)"][-3000:].decode(errors="replace")
        assert any(name.startswith("dead letter") for name in run.outputs), (
            "a refused value was meant to be dead-lettered"
        )
        logs, spans = (
            run.outputs["every secret in use: stderr (logs)"],
            run.outputs["every secret in use: stdout (spans, metrics)"],
        )
        assert b'"level": "DEBUG"' in logs, "debug logging was meant to be on"
        assert b'"trace_id"' in spans, "the console exporters were meant to print spans"

        # 2. The storage account refuses the key.
        async with sandbox_taking_our_key(sandbox_factory) as server:
            wrong_storage = storage.replace(STORAGE_KEY, WRONG_STORAGE_KEY)
            values = values_for(
                server,
                tmp_path / "unused.json",
                DIRECT,
                checkpoint_store="blob",
                checkpoint_connection_string=wrong_storage,
                threatstream_api_key=THREATSTREAM_KEY,
            )
            runs.append(await tibridge_run_once("storage refuses the key", values))
        assert runs[-1].code != 0

    # 3. A dry run: what would be sent, written to a file.
    dry = tmp_path / "dry"
    dry.mkdir()
    async with sandbox_taking_our_key(sandbox_factory) as server:
        values = values_for(
            server,
            dry / "checkpoint.json",
            DIRECT,
            threatstream_api_key=THREATSTREAM_KEY,
            publisher_dry_run_file=str(dry / "requests.jsonl"),
        )
        run = await tibridge_run_once("dry run", values)
    run.outputs |= files_under(dry)
    runs.append(run)
    assert run.code == 0
    assert (dry / "requests.jsonl").stat().st_size > 0

    # 4. ThreatStream refuses the key (401): the run gives up after its bound.
    async with sandbox_taking_our_key(sandbox_factory) as server:
        values = values_for(
            server,
            tmp_path / "refused.json",
            DIRECT,
            threatstream_api_key=WRONG_THREATSTREAM_KEY,
            once_refused_seconds=3,
        )
        runs.append(await tibridge_run_once("ThreatStream refuses the key", values))
    assert runs[-1].code == 3

    # 5. 5xx and hangs past the client timeouts on every API.
    faults = {
        api: {"p500": 0.2, "p503": 0.2, "p_hang": 0.1, "hang_seconds": 6} for api in ("graph", "threatstream")
    } | {"loganalytics": {"p503": 0.3}}
    async with sandbox_taking_our_key(sandbox_factory, faults=faults) as server:
        values = values_for(
            server,
            tmp_path / "faults.json",
            DIRECT,
            threatstream_api_key=THREATSTREAM_KEY,
            graph_request_timeout_seconds=1.0,
            threatstream_timeout_seconds=1.0,
        )
        runs.append(await tibridge_run_once("5xx and timeouts", values))

    # 6. The token request (the client secret's path) cannot reach its authority.
    async with sandbox_taking_our_key(sandbox_factory) as server:
        values = values_for(server, tmp_path / "token.json", DIRECT, threatstream_api_key=THREATSTREAM_KEY)
        nobody = {"AZURE_AUTHORITY_HOST": f"https://127.0.0.1:{free_port()}"}
        runs.append(await tibridge_run_once("no token", {**values, "credential": "default"}, extra_env=nobody))
    assert runs[-1].code != 0

    leaks = [leak for run in runs for leak in leaks_in(run.outputs)]
    scanned = sum(len(data) for run in runs for data in run.outputs.values())
    figures.record(
        "Secrets",
        Figure(
            f"{len(runs)} runs, {sum(len(run.outputs) for run in runs)} outputs, {scanned:,} bytes scanned",
            leaks=len(leaks),
            passed=not leaks,
            note="; ".join(leaks)[:300],
        ),
    )
    assert leaks == []


def test_the_scan_finds_a_secret_in_every_form() -> None:
    """The scanner itself: each form of each secret is found where it was planted."""
    for name, secret in SECRETS.items():
        for form, needle in forms(secret).items():
            assert leaks_in({"planted": b"...." + needle + b"...."}), f"the {name} was not found {form}"
    assert leaks_in({"clean": b"nothing to see"}) == []
