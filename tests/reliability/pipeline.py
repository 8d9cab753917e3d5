"""The whole pipeline against the sandbox, for the reliability suite, and a judgement of what it left behind.

Two shapes, both the real composition:
* `run_all_in_one` — `tibridge run --once` in this process (`run_pipeline` on the in-memory bus);
* `ThreeProcesses` — `python -m tibridge.collector|scorer|publisher`, three processes over the wire-level
  Service Bus double, which a test may SIGKILL and start again.

`judge` compares the end with the sandbox's expected outcome: every expected observable active exactly once
(`/_sandbox/reconcile`), no duplicate created, no request inside a Retry-After window, nothing left on a
subscription, and dead-letter queues holding exactly the designed poison — values ThreatStream refuses (its
whitelist, and the `reject_values` a test adds) — each with ThreatStream's reason.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from tests.sbdouble import ServiceBusDouble
from tibridge.cli.commands import run_pipeline
from tibridge.common.bus.port import Bus, ReceivedMessage
from tibridge.common.contracts import Envelope, decode
from tibridge.common.settings import BusKind, from_environment
from tibridge.common.topology import TOPOLOGY
from tibridge.publisher.worker import REJECTED_REASON
from tibridge.sandbox import ExpectedOutcome, SandboxServer
from tibridge.sandbox.faults import merge_faults

ROOT = Path(__file__).resolve().parents[2]
SUBSCRIPTIONS = [(topic.name, sub.name) for topic in TOPOLOGY.topics for sub in topic.subscriptions]

# Clients that give up and retry quickly, so faults cost seconds; the hangs below outlast each timeout.
QUICK: dict[str, Any] = {
    "health_port": 0,
    "log_level": "WARNING",
    "shutdown_grace_seconds": 5,
    "collector_rows_per_query": 400,
    "publisher_batch_age_seconds": 0.5,
    "graph_request_timeout_seconds": 2.0,
    "graph_retry_base_delay_seconds": 0.05,
    "graph_probe_interval_seconds": 1.0,
    "threatstream_timeout_seconds": 3.0,
    "threatstream_retry_base_delay_seconds": 0.05,
    "threatstream_probe_interval_seconds": 1.0,
    "loganalytics_query_timeout_seconds": 10,
    "loganalytics_retry_base_delay_seconds": 0.05,
}
# Past each client's timeout (Log Analytics: the query limit plus the collector's transport grace).
HANG_SECONDS = {"graph": 5.0, "threatstream": 8.0, "loganalytics": 40.0}


@dataclass(frozen=True)
class Mode:
    """How the services are set up: the publisher's ThreatStream mode and the scorer's unscorable policy."""

    name: str
    settings: Mapping[str, Any]
    forward_unscorable: bool = False


DIRECT = Mode("direct", {"publisher_mode": "direct"})
APPROVAL = Mode("approval", {"publisher_mode": "approval", "publisher_auto_approve": True})
FORWARD = Mode("forward", {"publisher_mode": "direct", "scorer_unscorable": "forward"}, forward_unscorable=True)
MODES = (DIRECT, APPROVAL, FORWARD)


def values_for(server: SandboxServer, checkpoint: Path, mode: Mode, **extra: Any) -> dict[str, Any]:
    """Every service's settings, by setting name: pointed at the sandbox, quick clients, the mode, `extra`."""
    return {
        **from_environment(server.env()),
        **QUICK,
        "checkpoint_path": str(checkpoint),
        **mode.settings,
        **extra,
    }


def environment(values: Mapping[str, Any]) -> dict[str, str]:
    """The settings as a process environment (nothing TIBRIDGE_* or OTEL_* inherited from ours)."""
    inherited = {name: value for name, value in os.environ.items() if not name.startswith(("TIBRIDGE_", "OTEL_"))}
    return {**inherited, **{f"TIBRIDGE_{name.upper()}": str(value) for name, value in values.items()}}


def expected_for(server: SandboxServer, mode: Mode) -> ExpectedOutcome:
    return server.expected(forward_unscorable=mode.forward_unscorable)


def add_poison(server: SandboxServer, expected: ExpectedOutcome, count: int, seed: int) -> ExpectedOutcome:
    """Makes ThreatStream refuse `count` of the values a correct run publishes (400, `reject_values`): designed
    poison, to end dead-lettered with ThreatStream's reason while everything else is delivered."""
    chosen = random.Random(seed).sample(sorted(expected.active), min(count, len(expected.active)))
    if not chosen:
        return expected
    pattern = "^(?:" + "|".join(re.escape(value) for value in chosen) + ")$"
    faults = server.state.faults
    faults.replace(merge_faults(faults.faults, {"threatstream": {"reject_values": pattern}}))
    poison = frozenset(chosen)
    return replace(
        expected,
        active=expected.active - poison,
        not_active=expected.not_active | poison,
        rejected={**expected.rejected, **dict.fromkeys(poison, "reject_values")},
    )


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    reason: str
    description: str
    value: str | None  # the observable, when the body is a readable envelope


def dead_letter_of(queue: str, body: bytes, reason: str | None, description: str | None) -> DeadLetter:
    decoded = decode(body)
    value = decoded.payload.observable.value if isinstance(decoded, Envelope) else None
    return DeadLetter(queue, reason or "", description or "", value)


@dataclass
class Run:
    """How a pipeline run ended, as the buses saw it."""

    code: int | None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    unsettled: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    output: str = ""  # what the processes wrote (three-process runs)


async def _memory_dead_letters(bus: Bus) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    for topic, sub in SUBSCRIPTIONS:
        async with bus.receiver(topic, sub, dead_letter=True) as receiver:
            messages: list[ReceivedMessage] = await receiver.receive(100_000, 0.05)
        found += [
            dead_letter_of(f"{topic}/{sub}", m.body, m.dead_letter_reason, m.dead_letter_description) for m in messages
        ]
    return found


async def run_all_in_one(values: Mapping[str, Any]) -> Run:
    """`tibridge run --once` on the in-memory bus, in this process; the bus is read once the run has ended."""
    buses: list[Bus] = []
    code = await run_pipeline(bus=BusKind.MEMORY, once=True, since=None, values=values, on_bus=buses.append)
    [bus] = buses
    unsettled = {f"{topic}/{sub}": int(await bus.has_pending(topic, sub)) for topic, sub in SUBSCRIPTIONS}
    return Run(code, await _memory_dead_letters(bus), {name: n for name, n in unsettled.items() if n})


SERVICES = ("collector", "scorer", "publisher")


class ThreeProcesses:
    """The three services as `python -m tibridge.<service>` processes over the Service Bus double.

    The collector runs once (`TIBRIDGE_COLLECTOR_MODE=once`) and is started again if it was killed before it
    finished; the scorer and the publisher run until `stop`. Output goes to files under `logs`.
    """

    def __init__(self, double: ServiceBusDouble, values: Mapping[str, Any], logs: Path) -> None:
        self._env = environment(
            {**values, "bus": "servicebus", "servicebus_connection_string": double.connection_string}
        )
        self._double = double
        self._logs = logs
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._starts: Counter[str] = Counter()
        self.collector_finished = False
        self.kills = 0

    async def start(self, service: str) -> None:
        self._starts[service] += 1
        log = (self._logs / f"{service}-{self._starts[service]}.log").open("wb")
        try:
            self._processes[service] = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"tibridge.{service}",
                cwd=ROOT,
                env=self._env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        finally:
            log.close()

    async def __aenter__(self) -> Self:
        for service in SERVICES:
            await self.start(service)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for process in self._processes.values():
            if process.returncode is None:
                process.kill()
        await asyncio.gather(*(process.wait() for process in self._processes.values()))

    def running(self, service: str) -> bool:
        process = self._processes.get(service)
        return process is not None and process.returncode is None

    async def kill(self, service: str) -> None:
        """SIGKILL: no grace, no flush; what the process held comes back when its locks lapse."""
        process = self._processes[service]
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            self.kills += 1

    async def restart(self, service: str) -> None:
        if service == "collector" and self.collector_finished:
            return
        await self.start(service)

    async def until_done(self, within: float) -> None:
        """Waits until the collector's pass finished and both subscriptions are empty (nothing held either)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            await self.check_collector()
            if self.collector_finished and all(self._double.depth(topic, sub) == 0 for topic, sub in SUBSCRIPTIONS):
                return
            for service in ("scorer", "publisher"):
                if not self.running(service):
                    raise AssertionError(f"the {service} exited by itself:\n{self.output()[-4000:]}")
            if loop.time() > deadline:
                depths = {f"{t}/{s}": self._double.depth(t, s) for t, s in SUBSCRIPTIONS}
                raise AssertionError(f"the pipeline did not settle within {within:.0f} s: {depths}")
            await asyncio.sleep(0.5)

    async def check_collector(self) -> None:
        """Notes when the collector's pass finished; a collector that failed by itself fails the test."""
        process = self._processes["collector"]
        if self.collector_finished or process.returncode is None:
            return
        if process.returncode == 0:
            self.collector_finished = True
            return
        raise AssertionError(f"the collector exited with {process.returncode}:\n{self.output()[-4000:]}")

    async def stop(self) -> dict[str, int]:
        """SIGTERM to whatever still runs; their exit codes."""
        for process in self._processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in self._processes.values())), 60)
        return dict(zip(self._processes, codes, strict=True))

    def output(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in sorted(self._logs.glob("*.log")))

    def run(self, code: int | None) -> Run:
        dead = [
            dead_letter_of(f"{t}/{s}", m.body, m.dead_letter_reason, m.dead_letter_description)
            for t, s in SUBSCRIPTIONS
            for m in self._double.dead_letters(t, s)
        ]
        unsettled = {f"{t}/{s}": self._double.depth(t, s) for t, s in SUBSCRIPTIONS}
        return Run(code, dead, {name: n for name, n in unsettled.items() if n}, self.kills, self.output())


Contents = Counter[tuple[str, str, str, str | None]]


def threatstream_contents(server: SandboxServer) -> Contents:
    """What tibridge left in ThreatStream: (value, itype, status, hash subtype) of every object it wrote."""
    return Counter(
        (obj.value, obj.itype, obj.status, None if obj.subtype is None else str(obj.subtype))
        for obj in server.state.intel.ours()
    )


def contents_problems(got: Contents, undisturbed: Contents) -> list[str]:
    """How ThreatStream's contents differ from an undisturbed run's (empty: they are the same)."""
    missing, extra = undisturbed - got, got - undisturbed
    problems = []
    if missing:
        problems.append(f"{sum(missing.values())} object(s) of the undisturbed run missing: {sorted(missing)[:5]}")
    if extra:
        problems.append(f"{sum(extra.values())} object(s) the undisturbed run does not have: {sorted(extra)[:5]}")
    return problems


def hour_now() -> datetime:
    """An anchor two sandboxes share, so they generate the same rows."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass
class Judgement:
    problems: list[str]
    expected: int
    delivered: int
    duplicates: int
    inside_retry_after: int
    faults_injected: int
    dead_lettered: int


def judge(server: SandboxServer, expected: ExpectedOutcome, run: Run) -> Judgement:
    """Every way the run's end differs from what a correct pipeline leaves (empty `problems`: none)."""
    stats = server.stats()
    problems = [f"ThreatStream: {problem}" for problem in server.reconcile(expected)]
    if run.code not in (0, None):
        problems.insert(0, f"the run exited with code {run.code}")
    ours = list(server.state.intel.ours())
    active = Counter(obj.value for obj in ours if obj.status == "active")
    delivered = sum(1 for value in expected.active if active[value] == 1)
    duplicates = stats["threatstream"]["duplicates_created"] + sum(n - 1 for n in active.values() if n > 1)
    inside = stats["inside_retry_after"]
    if any(inside.values()):
        problems.append(f"requests inside a Retry-After window: {inside}")
    if run.unsettled:
        problems.append(f"messages left unsettled: {run.unsettled}")
    problems += _dead_letter_problems(run.dead_letters, expected.rejected.keys())
    return Judgement(
        problems=problems,
        expected=len(expected.active),
        delivered=delivered,
        duplicates=duplicates,
        inside_retry_after=sum(inside.values()),
        faults_injected=sum(sum(kinds.values()) for kinds in stats["faults_injected"].values()),
        dead_lettered=len(run.dead_letters),
    )


def _dead_letter_problems(dead: Iterable[DeadLetter], poison: Iterable[str]) -> list[str]:
    designed = set(poison)
    problems = []
    undesigned = [letter for letter in dead if letter.value not in designed]
    if undesigned:
        shown = ", ".join(f"{d.queue}: {d.value!r} ({d.reason}: {d.description[:120]})" for d in undesigned[:5])
        problems.append(f"{len(undesigned)} dead-lettered message(s) that are no designed poison: {shown}")
    wrong_reason = [letter for letter in dead if letter.value in designed and letter.reason != REJECTED_REASON]
    if wrong_reason:
        shown = ", ".join(f"{d.value!r} ({d.reason})" for d in wrong_reason[:5])
        problems.append(f"poison dead-lettered without ThreatStream's reason ({REJECTED_REASON}): {shown}")
    missing = designed - {letter.value for letter in dead}
    if missing:
        problems.append(f"{len(missing)} poison value(s) not dead-lettered: {', '.join(sorted(missing)[:5])}")
    return problems
