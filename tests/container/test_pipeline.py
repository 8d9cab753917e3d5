"""The images, started as docker-compose.yml + docker-compose.ci.yml describe them (the Service Bus double in
the emulator's place), carry the sandbox's seeded indicators into its ThreatStream: the run reconciles exactly
as `make demo` does, also when the publisher's container is killed mid-run and started again."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.container.compose import ci_project
from tests.container.engine import Engine
from tests.container.stack import Stack, running
from tibridge.cli.demo import reconcile
from tibridge.collector.settings import CollectorSettings
from tibridge.common.settings import from_environment, load_settings
from tibridge.common.topology import PUBLISHER_SUBSCRIPTION, SCORED_TOPIC
from tibridge.publisher.worker import REJECTED_REASON
from tibridge.scorer.settings import ScorerSettings

PROBE = Path(__file__).with_name("probe.py")
RECONCILE_TIMEOUT_SECONDS = 420.0
POLL_SECONDS = 3.0
SERVICES = ("collector", "scorer", "publisher")


def _sandbox_url(stack: Stack) -> str:
    command = stack.project.services["sandbox"].command
    return f"http://127.0.0.1:{command[command.index('--port') + 1]}"


def _expected_query(stack: Stack) -> str:
    """The settings the demo derives the expected outcome from, as the sandbox's /_sandbox/expected takes them."""
    scorer = load_settings(ScorerSettings, **from_environment(stack.project.services["scorer"].environment))
    collector = load_settings(CollectorSettings, **from_environment(stack.project.services["collector"].environment))
    query: dict[str, str] = {
        "threshold": str(scorer.scorer.threshold),
        "forward_unscorable": str(str(scorer.scorer.unscorable) == "forward").lower(),
        "drop_non_global": str(collector.collector.reject_non_global_ips).lower(),
    }
    if scorer.scorer.allowed_classifications:
        query["allowed_classifications"] = ",".join(str(each) for each in scorer.scorer.allowed_classifications)
    return urlencode(query)


def _probe(stack: Stack) -> dict[str, Any]:
    connection = stack.project.services["publisher"].environment["TIBRIDGE_SERVICEBUS_CONNECTION_STRING"]
    output = stack.exec(
        "sandbox", "python", "-", _sandbox_url(stack), _expected_query(stack), connection, input=PROBE.read_text()
    )
    report = json.loads(output)
    assert isinstance(report, dict)
    return report


def _problems(report: dict[str, Any]) -> list[str]:
    """The demo's reconciliation, plus a bus that has settled: nothing waiting, nothing dead-lettered but what
    ThreatStream's whitelist refused (with its reason)."""
    problems = reconcile(report["reconcile"]["problems"], report["stats"])
    refusals = len(report["expected"]["rejected"])
    for entity, state in report["bus"].items():
        if state["pending"]:
            problems.append(f"{entity} still has messages waiting")
        designed = {REJECTED_REASON} if entity == f"{SCORED_TOPIC}/{PUBLISHER_SUBSCRIPTION}" and refusals else set()
        unexpected = {reason: n for reason, n in state["reasons"].items() if reason not in designed}
        if unexpected:
            problems.append(f"message(s) dead-lettered on {entity}: {unexpected}")
        if designed and state["dead_lettered"] < refusals:
            problems.append(f"{state['dead_lettered']} refusal(s) dead-lettered on {entity}, {refusals} expected")
    return problems


def _threatstream_requests(stack: Stack) -> int:
    stats = json.loads(
        stack.exec(
            "sandbox",
            "python",
            "-c",
            "import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=10).read().decode())",
            f"{_sandbox_url(stack)}/_sandbox/stats",
        )
    )
    return sum(stats["requests"].get("threatstream", {}).values())


def _wait_for_reconciliation(stack: Stack) -> list[str]:
    deadline = time.monotonic() + RECONCILE_TIMEOUT_SECONDS
    problems = ["not probed yet"]
    while time.monotonic() < deadline:
        for service in SERVICES:
            assert stack.running(service), f"{service} exited:\n{stack.logs(service)}"
        problems = _problems(_probe(stack))
        if not problems:
            return []
        time.sleep(POLL_SECONDS)
    return problems


@pytest.mark.timeout(900)
def test_containers_reconcile_and_survive_a_publisher_kill(engine: Engine, tmp_path: Path) -> None:
    with running(engine, ci_project(), tmp_path) as stack:
        try:
            # Mid-run: ThreatStream has had requests from the publisher, and the run is not finished yet.
            deadline = time.monotonic() + RECONCILE_TIMEOUT_SECONDS
            while _threatstream_requests(stack) == 0:
                assert time.monotonic() < deadline, "the publisher sent nothing to ThreatStream"
                time.sleep(0.5)
            stack.kill("publisher")
            assert not stack.running("publisher")
            at_kill = _problems(_probe(stack))
            assert at_kill, "the run had finished before the publisher was killed: the restart proves nothing"
            # Started again at once: it may take a newer revision of an indicator before the older one still
            # locked for the dead process comes back, and must not apply that older one over it.
            stack.start_again("publisher")

            problems = _wait_for_reconciliation(stack)
            assert problems == [], "\n".join([*problems, stack.all_logs()])

            # SIGTERM ends each service cleanly (exit code 0), handing back whatever it held.
            for service in SERVICES:
                assert stack.stop(service) == 0, f"{service} did not stop cleanly:\n{stack.logs(service)}"
        except BaseException:
            print(stack.all_logs())
            raise
