"""`tibridge sandbox`: run the local Log Analytics, Graph and ThreatStream stand-ins until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from tibridge.sandbox.config import SandboxConfig, parse_settings
from tibridge.sandbox.dataset import RowsFileError, load_rows
from tibridge.sandbox.expected import ExpectedOutcomeUnavailable
from tibridge.sandbox.faults import FaultSpecError, merge_faults, parse_fault_flags
from tibridge.sandbox.reputation import PinnedReputationsError, load_pinned
from tibridge.sandbox.server import SandboxServer

app = typer.Typer(add_completion=False, help="Local stand-ins for Log Analytics, MDTI (Graph) and ThreatStream.")


class NeverSeen(StrEnum):
    NOT_FOUND = "404"
    UNKNOWN = "unknown"


@app.callback(invoke_without_command=True)
def sandbox(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 8642,
    env_file: Annotated[
        Path | None, typer.Option(help="Write the TIBRIDGE_* environment here; load it with `set -a; . PATH`.")
    ] = None,
    indicators: Annotated[int, typer.Option(min=0, help="Distinct indicators to generate.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the data, the reputations and the faults.")] = 7,
    days: Annotated[int, typer.Option(min=1, help="Days of data before the anchor.")] = 14,
    anchor: Annotated[
        datetime | None, typer.Option(help="End of the generated data, UTC (default: now, to the hour).")
    ] = None,
    rows: Annotated[Path | None, typer.Option(help="Serve exactly these rows (JSONL, keys = column names).")] = None,
    reputations: Annotated[
        Path | None,
        typer.Option(help='Pinned reputations: {"host": {"score": .., "classification": .., "rules": []}}.'),
    ] = None,
    expected: Annotated[Path | None, typer.Option(help="Write the expected outcome JSON here.")] = None,
    row_cap: Annotated[int, typer.Option(min=1, help="Log Analytics rows per result before PartialError.")] = 500_000,
    never_seen: Annotated[
        NeverSeen, typer.Option(help="How Graph answers hosts MDTI never saw.")
    ] = NeverSeen.NOT_FOUND,
    graph_forbidden: Annotated[
        bool, typer.Option(help="Answer 403 as for a tenant without the permission (= --set graph_refusal=forbidden).")
    ] = False,
    fault: Annotated[
        list[str] | None,
        typer.Option(help="API.FIELD=VALUE, repeatable, e.g. graph.p429=0.1 threatstream.latency_ms=50."),
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="SETTING=VALUE (JSON or plain text), repeatable: any SandboxConfig field, e.g. "
            "threatstream_tlp=tlp1, graph_refusal=licence_500, 'threatstream_permissions=[\"import\"]'.",
        ),
    ] = None,
) -> None:
    try:
        config = SandboxConfig(
            seed=seed,
            indicators=indicators,
            days=days,
            anchor=anchor.replace(tzinfo=UTC) if anchor and anchor.tzinfo is None else anchor,
            dataset=load_rows(rows) if rows else None,
            reputations=load_pinned(reputations) if reputations else {},
            faults=merge_faults({}, parse_fault_flags(fault or [])),
            row_cap=row_cap,
            # --set may name any field, these two included: it wins over the flags.
            **{
                "never_seen": never_seen.value,
                "graph_refusal": "forbidden" if graph_forbidden else None,
                **parse_settings(setting or []),
            },
        )
    except (RowsFileError, PinnedReputationsError, FaultSpecError, OSError, ValueError) as error:
        typer.echo(f"tibridge sandbox: {error}", err=True)
        raise typer.Exit(2) from None
    try:
        asyncio.run(_serve(config, port, env_file, expected))
    except (OSError, ExpectedOutcomeUnavailable) as error:
        typer.echo(f"tibridge sandbox: {error}", err=True)
        raise typer.Exit(1) from None


async def _serve(config: SandboxConfig, port: int, env_file: Path | None, expected: Path | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with SandboxServer(config, port=port) as server:
        if expected is not None:
            text = json.dumps(server.expected().to_json(), indent=1)
            await asyncio.to_thread(expected.write_text, text, encoding="utf-8")
        if env_file is not None:
            await asyncio.to_thread(server.write_env_file, env_file)
        typer.echo(
            f"tibridge sandbox listening on {server.base_url} ({len(server.dataset.rows)} rows, "
            f"workspace {config.workspace_id}); Ctrl-C stops it",
        )
        await stop.wait()
