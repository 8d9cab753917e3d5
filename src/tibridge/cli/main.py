"""The `tibridge` command."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from tibridge.common.runtime import ServiceName, exit_code
from tibridge.common.settings import BusKind

app = typer.Typer(
    help="Carries MDTI indicators from Microsoft Sentinel into Anomali ThreatStream, keeping what MDTI says is bad.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Validate and document the settings.", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect and re-submit dead-lettered messages (Service Bus).", no_args_is_help=True)
topology_app = typer.Typer(help="The bus topology.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(dlq_app, name="dlq")
app.add_typer(topology_app, name="topology")


def _run(command: Callable[[], Coroutine[Any, Any, int]]) -> None:
    """Runs a command; bad settings end it with one line per problem and exit code 2, never a traceback."""
    raise typer.Exit(exit_code(command))


SinceOption = Annotated[
    str | None,
    typer.Option(help="Backfill: start this far back (ISO 8601 duration such as P30D), ignoring the checkpoint."),
]


@app.command()
def run(
    once: Annotated[
        bool,
        typer.Option(
            help="One collector pass, then stop when everything downstream settled; exit 3 when a dependency keeps "
            "refusing us for TIBRIDGE_ONCE_REFUSED_SECONDS."
        ),
    ] = False,
    bus: Annotated[BusKind, typer.Option(help="`memory` (all in one process) or `servicebus`.")] = BusKind.MEMORY,
    since: SinceOption = None,
    yes: Annotated[bool, typer.Option(help="Run a backfill past TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS.")] = False,
) -> None:
    """Run all three services in one process (the embedded deployment)."""
    from tibridge.cli.commands import run_pipeline

    confirmed = {"collector_backfill_confirmed": True} if yes else None
    _run(lambda: run_pipeline(bus=bus, once=once, since=since, values=confirmed))


@app.command()
def collector(
    once: Annotated[bool, typer.Option(help="One pass, then exit (CronJob / Container Apps job).")] = False,
    since: SinceOption = None,
    plan: Annotated[
        bool, typer.Option(help="With --since: count the backfill's rows per day and print what it would cost, only.")
    ] = False,
    yes: Annotated[bool, typer.Option(help="Run a backfill past TIBRIDGE_COLLECTOR_BACKFILL_MAX_ROWS.")] = False,
) -> None:
    """Run the collector over Service Bus; a backfill (--since) is counted and shown before it is read."""
    from tibridge.cli.backfill import backfill

    _run(lambda: backfill(since=since, once=once, plan_only=plan, yes=yes))


@app.command()
def scorer() -> None:
    """Run the scorer over Service Bus."""
    from tibridge.cli.commands import run_one_service

    _run(lambda: run_one_service(ServiceName.SCORER))


@app.command()
def publisher() -> None:
    """Run the publisher over Service Bus."""
    from tibridge.cli.commands import run_one_service

    _run(lambda: run_one_service(ServiceName.PUBLISHER))


@app.command()
def demo(
    indicators: Annotated[int, typer.Option(min=10, max=200_000, help="Rows in the seeded Sentinel table.")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed of the sandbox's data and reputations.")] = 7,
    out: Annotated[Path, typer.Option(help="Where the JSON summary and Markdown report go.")] = Path(".demo"),
    mode: Annotated[str, typer.Option(help="ThreatStream mode: approval or direct.")] = "approval",
) -> None:
    """Start the sandbox with seeded data, run the whole pipeline against it and reconcile the result."""
    from tibridge.cli.demo import run_demo

    _run(lambda: run_demo(indicators=indicators, seed=seed, out=out, mode=mode))


@app.command()
def preflight(
    service: Annotated[list[ServiceName] | None, typer.Argument(help="Which services (default: all three).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON document instead of lines.")] = False,
) -> None:
    """Check every dependency of each service with a harmless call; name what is missing. Exit 0 when none failed."""
    from tibridge.cli.preflight import run_preflight

    _run(lambda: run_preflight(service or list(ServiceName), as_json=json_output))


@app.command()
def explain(
    value: Annotated[str, typer.Argument(help="The observable: an IP, domain, URL, email or file hash.")],
    json_output: Annotated[bool, typer.Option("--json", help="One JSON document instead of lines.")] = False,
) -> None:
    """Why a value is (not) in ThreatStream: its Sentinel rows, their normalisation, its reputation, the verdict
    under the current settings, and every ThreatStream entry of it, ours or not."""
    from tibridge.cli.explain import run_explain

    _run(lambda: run_explain(value, as_json=json_output))


@app.command()
def reconcile(
    repair: Annotated[
        bool, typer.Option(help="Send the differences through the publisher (messages on the scored topic).")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON document instead of lines.")] = False,
    report: Annotated[Path | None, typer.Option(help="Also write a Markdown report to this file.")] = None,
) -> None:
    """Compare Sentinel's indicators (after normalisation and the verdict rules) with what tibridge owns in
    ThreatStream. Exit 0 in sync (or repaired), 1 with differences, 4 when a source could not be read whole."""
    from tibridge.cli.reconcile import run_reconcile

    _run(lambda: run_reconcile(repair=repair, as_json=json_output, report=report))


@config_app.command("check")
def config_check(
    service: Annotated[list[ServiceName] | None, typer.Argument(help="Which services (default: all three).")] = None,
    bus: Annotated[BusKind | None, typer.Option(help="Check as if TIBRIDGE_BUS were this.")] = None,
) -> None:
    """Validate the settings in the environment; one line per problem, naming what to set."""
    from tibridge.cli.commands import check_settings, unknown_settings

    problems = check_settings(service or list(ServiceName), bus=bus)
    for name, lines in problems.items():
        if lines:
            for line in lines:
                typer.echo(f"{name}: error: {line}", err=True)
        else:
            typer.echo(f"{name}: settings OK")
    unknown = unknown_settings(os.environ)
    for line in unknown:
        typer.echo(f"environment: error: {line}", err=True)
    raise typer.Exit(2 if any(problems.values()) or unknown else 0)


@config_app.command("docs")
def config_docs(
    readme: Annotated[
        Path | None, typer.Option(help="Rewrite the table inside this README instead of printing.")
    ] = None,
) -> None:
    """Print the settings table (Markdown) that the README carries."""
    from tibridge.cli.settings_docs import readme_with_table, settings_table

    if readme is None:
        typer.echo(settings_table(), nl=False)
        return
    readme.write_text(readme_with_table(readme.read_text()))
    typer.echo(f"updated the settings table in {readme}")


@topology_app.command("emulator-config")
def emulator_config() -> None:
    """Print the Service Bus emulator config.json generated from the topology."""
    from tibridge.common.topology import emulator_config_json

    sys.stdout.write(emulator_config_json())


@dlq_app.command("list")
def dlq_list(
    subscription: Annotated[ServiceName, typer.Argument(help="scorer or publisher.")],
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Show dead-lettered messages of a subscription with their reasons (they stay in the dead-letter queue)."""
    from tibridge.cli.dlq import list_dead_letters

    _run(lambda: list_dead_letters(subscription, limit))


@dlq_app.command("replay")
def dlq_replay(
    subscription: Annotated[ServiceName, typer.Argument(help="scorer or publisher.")],
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    reason: Annotated[str | None, typer.Option(help="Only messages dead-lettered for this reason.")] = None,
) -> None:
    """Re-submit dead-lettered messages to their topic (after fixing the cause), then remove them from the DLQ."""
    from tibridge.cli.dlq import replay_dead_letters

    _run(lambda: replay_dead_letters(subscription, limit, reason))


def _mount_sandbox() -> None:
    from tibridge.sandbox.cli import app as sandbox_app

    app.add_typer(sandbox_app, name="sandbox", help="Serve the local Log Analytics, MDTI and ThreatStream stand-ins.")


_mount_sandbox()
