"""`tibridge preflight`: before anything runs, every dependency of every configured service checked with a harmless
call, naming the exact role, permission or setting that is missing.

Each check goes through the service's own client and its own refusal wording: the collector's Log Analytics source
(a one-row count), the scorer's Graph client (a token, one reputation lookup, classified as the scorer classifies
refusals), the publisher's ThreatStream gateway, the bus adapter, the collector's checkpoint store. Nothing is
changed anywhere: ThreatStream's rights are probed on objects that do not exist, a Service Bus sender link is
opened and closed without sending, a probe blob or file is written beside the checkpoint and deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import typer

from tibridge.cli.registry import SERVICES
from tibridge.collector.app import checkpoint_store, log_analytics_source
from tibridge.collector.checkpoint import BlobCheckpointStore, CheckpointError, FileCheckpointStore
from tibridge.collector.settings import CheckpointKind, CollectorSettings
from tibridge.collector.source import SourceError
from tibridge.collector.windows import Window
from tibridge.common.bus.port import BusError
from tibridge.common.clock import Clock, SystemClock
from tibridge.common.identity import build_credential
from tibridge.common.pacing import Retry
from tibridge.common.runtime import ServiceName
from tibridge.common.settings import BusKind, ServiceSettings, SettingsError, load_settings
from tibridge.common.topology import (
    INDICATORS_TOPIC,
    PUBLISHER_SUBSCRIPTION,
    SCORED_TOPIC,
    SCORER_SUBSCRIPTION,
    TOPOLOGY,
)
from tibridge.publisher.app import gateway_for
from tibridge.publisher.payloads import Operation, Permission, ThreatStreamRequest, approve_request, owned_search
from tibridge.publisher.settings import PublisherSettings, PublishMode
from tibridge.publisher.threatstream import Gateway, Outcome
from tibridge.scorer.app import graph_http
from tibridge.scorer.graph_batches import PROBE_HOST
from tibridge.scorer.reputation import (
    GRAPH_SCOPE,
    PRODUCT,
    SERVER_ERROR,
    Found,
    GraphReputationClient,
    Refused,
    Unanswerable,
)
from tibridge.scorer.settings import LookupMode, ScorerSettings

if TYPE_CHECKING:
    from tibridge.common.bus.servicebus import ServiceBusBus

# A preflight answers in seconds: few attempts per call, whatever the services' own budgets are.
PREFLIGHT_ATTEMPTS = {"loganalytics_query_attempts": 2, "graph_max_attempts": 2, "threatstream_max_attempts": 2}
# The one-row query: how many rows of the configured source systems the last day holds.
LOG_ANALYTICS_PROBE_SPAN = timedelta(days=1)
# No ThreatStream object or import session has id 0: changing it changes nothing, whatever the rights.
ABSENT_ID = 0
# What each service sends to and receives from (the topology's topics and subscriptions).
SENDS: dict[ServiceName, tuple[str, ...]] = {
    ServiceName.COLLECTOR: (INDICATORS_TOPIC,),
    ServiceName.SCORER: (SCORED_TOPIC,),
    ServiceName.PUBLISHER: (),
}
RECEIVES: dict[ServiceName, tuple[tuple[str, str], ...]] = {
    ServiceName.COLLECTOR: (),
    ServiceName.SCORER: ((INDICATORS_TOPIC, SCORER_SUBSCRIPTION),),
    ServiceName.PUBLISHER: ((SCORED_TOPIC, PUBLISHER_SUBSCRIPTION),),
}


class Status(StrEnum):
    OK = "ok"
    FAIL = "fail"  # missing or refused: the exit code says so
    UNCHECKED = "unchecked"  # cannot be found out without changing something: said plainly, not a failure


@dataclass(frozen=True)
class CheckResult:
    service: str
    check: str
    status: Status
    detail: str

    def line(self) -> str:
        return f"{self.status.upper():9} {self.service:9} {self.check}: {self.detail}"


def exit_code_of(results: Sequence[CheckResult]) -> int:
    """0 when nothing failed (unchecked items do not fail a pipeline), 1 otherwise."""
    return 1 if any(result.status is Status.FAIL for result in results) else 0


def permission_probe(permission: Permission, status: int | None, detail: str, *, needed: str | None) -> CheckResult:
    """What a change of a non-existent object says about `permission`: 403 → missing, 404 → not refused.

    `needed` says what this deployment needs the permission for (None: nothing, so its absence is no failure);
    `detail` is the ThreatStream client's own account of the answer."""
    publisher, check = str(ServiceName.PUBLISHER), f"ThreatStream '{permission}'"
    if status == 403:
        if needed:
            said = detail if needed in detail else f"{detail}; this deployment needs it for {needed}"
            return CheckResult(publisher, check, Status.FAIL, said)
        return CheckResult(publisher, check, Status.OK, f"missing, and this deployment does not need it: {detail}")
    if status == 404:
        return CheckResult(
            publisher,
            check,
            Status.OK,
            "not refused: changing an object that does not exist was answered 404, not 403 (this assumes ThreatStream "
            f"checks rights before it looks the object up, as the sandbox does; unverified){_need(needed)}",
        )
    return CheckResult(
        publisher,
        check,
        Status.FAIL,
        f"ThreatStream answered {status if status is not None else 'nothing'} to the rights probe: {detail}",
    )


def _need(needed: str | None) -> str:
    return f"; this deployment needs it for {needed}" if needed else "; this deployment does not need it"


def rule_result(service: str, subscription: str, found: Sequence[tuple[str, str]]) -> CheckResult:
    """Whether a subscription's rules (name, SQL expression) are exactly the topology's."""
    topic = next(t for t in TOPOLOGY.topics if any(s.name == subscription for s in t.subscriptions))
    spec = topic.subscription(subscription)
    if spec.rule is None:
        wanted: list[tuple[str, str]] = [("$Default", "1=1")]
    else:
        wanted = [(spec.rule.name, spec.rule.sql)]
    check = f"rule of {topic.name}/{subscription}"
    if [(name, _sql(sql)) for name, sql in found] == [(name, _sql(sql)) for name, sql in wanted]:
        return CheckResult(service, check, Status.OK, f"{wanted[0][0]}: {wanted[0][1]}, as the topology defines")
    shown = "; ".join(f"{name}: {sql}" for name, sql in found) or "none"
    return CheckResult(
        service,
        check,
        Status.FAIL,
        f"has {shown} where the topology defines {wanted[0][0]}: {wanted[0][1]}; recreate it "
        "(servicebus/config.json and deploy/azure/main.json are generated from the topology)",
    )


def _sql(expression: str) -> str:
    return " ".join(expression.replace(" ,", ",").replace(", ", ",").split()).lower()


async def run_preflight(services: Sequence[ServiceName], *, as_json: bool, clock: Clock | None = None) -> int:
    results = await preflight(services, clock or SystemClock())
    if as_json:
        typer.echo(json.dumps({"ok": exit_code_of(results) == 0, "checks": [asdict(r) for r in results]}, indent=2))
    else:
        for result in results:
            typer.echo(result.line())
        failed = sum(result.status is Status.FAIL for result in results)
        typer.echo(f"{len(results)} checks: {failed} failed" if failed else f"{len(results)} checks: none failed")
    return exit_code_of(results)


async def preflight(services: Sequence[ServiceName], clock: Clock) -> list[CheckResult]:
    """Every check of `services`, in pipeline order; a service whose settings do not load says so instead."""
    results: list[CheckResult] = []
    for name in services:
        try:
            settings = load_settings(SERVICES[name].settings, **PREFLIGHT_ATTEMPTS)
        except SettingsError as error:
            results += [CheckResult(str(name), "settings", Status.FAIL, problem) for problem in error.problems]
            continue
        results.append(CheckResult(str(name), "settings", Status.OK, "every setting is valid"))
        async with contextlib.AsyncExitStack() as resources:
            checks = _checks(name, settings, resources, clock)
            results += [await _guarded(name, check_name, check) for check_name, check in checks]
        results += await _bus_checks(name, settings)
    return results


Check = Callable[[], Awaitable[CheckResult]]


def _checks(
    name: ServiceName, settings: ServiceSettings, resources: contextlib.AsyncExitStack, clock: Clock
) -> list[tuple[str, Check]]:
    if isinstance(settings, CollectorSettings):
        return [
            ("Log Analytics", lambda: _log_analytics(settings, resources, clock)),
            ("checkpoint", lambda: _checkpoint(settings, resources)),
        ]
    if isinstance(settings, ScorerSettings):
        return [
            ("Graph token", lambda: _graph_token(settings)),
            ("Graph reputation", lambda: _graph_lookup(settings, resources, clock)),
        ]
    if isinstance(settings, PublisherSettings):
        return _threatstream_checks(settings, resources, clock)
    raise TypeError(f"no preflight for the {name} service")


async def _guarded(name: ServiceName, check_name: str, check: Check) -> CheckResult:
    """A check that crashes is a failed check, named, never a traceback."""
    try:
        return await check()
    except Exception as error:
        return CheckResult(str(name), check_name, Status.FAIL, f"{type(error).__name__}: {error}"[:500])


# -- collector ----------------------------------------------------------------------------------------------


async def _log_analytics(
    settings: CollectorSettings, resources: contextlib.AsyncExitStack, clock: Clock
) -> CheckResult:
    credential = build_credential(settings.credential, settings.loganalytics.endpoint)
    resources.push_async_callback(credential.close)
    source = log_analytics_source(settings, credential, resources, clock)
    now = clock.now()
    window = Window(now - LOG_ANALYTICS_PROBE_SPAN, now)
    try:
        bins = await source.count(window, LOG_ANALYTICS_PROBE_SPAN)
    except SourceError as error:
        return CheckResult(str(ServiceName.COLLECTOR), "Log Analytics", Status.FAIL, str(error))
    rows = sum(found.rows for found in bins)
    table = settings.collector.table.table_name
    return CheckResult(
        str(ServiceName.COLLECTOR),
        "Log Analytics",
        Status.OK,
        f"workspace {settings.loganalytics.workspace_id} answered (Log Analytics Reader granted): {rows} rows of "
        f"{table} from the configured source systems in the last day",
    )


async def _checkpoint(settings: CollectorSettings, resources: contextlib.AsyncExitStack) -> CheckResult:
    checkpoint = settings.checkpoint
    endpoints = [checkpoint.account_url] if checkpoint.store is CheckpointKind.BLOB and checkpoint.account_url else []
    credential = build_credential(settings.credential, *endpoints)
    resources.push_async_callback(credential.close)
    store = checkpoint_store(checkpoint, credential, resources)
    where = (
        f"file {checkpoint.path}"
        if checkpoint.store is CheckpointKind.FILE
        else f"blob {checkpoint.container}/{checkpoint.blob}"
    )
    try:
        watermark = await store.load()
        if isinstance(store, FileCheckpointStore | BlobCheckpointStore):
            await store.check_writable()
    except CheckpointError as error:
        return CheckResult(str(ServiceName.COLLECTOR), "checkpoint", Status.FAIL, str(error))
    said = f"watermark {watermark.isoformat()}" if watermark else "no watermark yet (the first pass reads back "
    said += "" if watermark else "TIBRIDGE_COLLECTOR_INITIAL_LOOKBACK)"
    return CheckResult(str(ServiceName.COLLECTOR), "checkpoint", Status.OK, f"{where} readable and writable; {said}")


# -- scorer -------------------------------------------------------------------------------------------------


async def _graph_token(settings: ScorerSettings) -> CheckResult:
    credential = build_credential(settings.credential, settings.graph.base_url)
    try:
        await credential.get_token(GRAPH_SCOPE)
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        return CheckResult(
            str(ServiceName.SCORER),
            "Graph token",
            Status.FAIL,
            f"no token for {GRAPH_SCOPE} ({first_line[:300]}); check TIBRIDGE_CREDENTIAL and the workload or managed "
            "identity (or AZURE_CLIENT_ID / AZURE_TENANT_ID / AZURE_CLIENT_SECRET)",
        )
    finally:
        await credential.close()
    return CheckResult(str(ServiceName.SCORER), "Graph token", Status.OK, f"a token for {GRAPH_SCOPE}")


async def _graph_lookup(settings: ScorerSettings, resources: contextlib.AsyncExitStack, clock: Clock) -> CheckResult:
    client = GraphReputationClient(graph_http(settings, resources, clock), LookupMode.SINGLE)
    [answer] = await client.lookup([PROBE_HOST])
    scorer, check = str(ServiceName.SCORER), "Graph reputation"
    if isinstance(answer, Found):
        return CheckResult(
            scorer,
            check,
            Status.OK,
            f"{PRODUCT} answered the reputation of {PROBE_HOST}: ThreatIntelligence.Read.All is granted and the "
            "tenant may use the API",
        )
    if isinstance(answer, Refused):
        return CheckResult(scorer, check, Status.FAIL, answer.reason)
    if isinstance(answer, Unanswerable):
        return CheckResult(scorer, check, Status.FAIL, f"Graph answered HTTP {answer.status}: {answer.message}")
    return CheckResult(scorer, check, Status.FAIL, _graph_retry(answer))


def _graph_retry(answer: Retry) -> str:
    if answer.cause == SERVER_ERROR:
        return (
            f'Graph answered HTTP 500 ("{answer.detail}"), as it answers a tenant that may not use the API when it '
            "does so for every host: check that the tenant has Microsoft Defender XDR or Microsoft Sentinel and that "
            "the app registration has ThreatIntelligence.Read.All with admin consent"
        )
    return f"Graph did not answer cleanly ({answer.cause}{': ' + answer.detail if answer.detail else ''}); try again"


# -- publisher ----------------------------------------------------------------------------------------------


def _threatstream_checks(
    settings: PublisherSettings, resources: contextlib.AsyncExitStack, clock: Clock
) -> list[tuple[str, Check]]:
    if settings.publisher.dry_run_file is not None:

        async def dry_run() -> CheckResult:
            return CheckResult(
                str(ServiceName.PUBLISHER),
                "ThreatStream",
                Status.OK,
                f"dry run into {settings.publisher.dry_run_file}: ThreatStream is not called",
            )

        return [("ThreatStream", dry_run)]
    gateway = gateway_for(settings, resources, clock)
    return [
        ("ThreatStream key", lambda: _threatstream_key(settings, gateway)),
        ("ThreatStream 'Approve Intel'", lambda: _approve_intel(settings, gateway)),
        ("ThreatStream 'Approve Import'", lambda: _approve_import(settings, gateway)),
        ("ThreatStream 'Import Intelligence'", lambda: _import_intelligence(settings)),
    ]


async def _threatstream_key(settings: PublisherSettings, gateway: Gateway) -> CheckResult:
    search = owned_search(settings.publisher.owner_tag, None)
    answer = await gateway.send(dataclasses.replace(search, params={**search.params, "limit": "1"}))
    publisher, check = str(ServiceName.PUBLISHER), "ThreatStream key"
    if answer.outcome is not Outcome.ACCEPTED:
        return CheckResult(publisher, check, Status.FAIL, answer.detail)
    total = _total_count(answer.body)
    held = f"; {total} objects carry the owner tag {settings.publisher.owner_tag!r}" if total is not None else ""
    return CheckResult(
        publisher, check, Status.OK, f"user {settings.threatstream.username!r} may read intelligence{held}"
    )


def _total_count(body: Any) -> int | None:
    meta = body.get("meta") if isinstance(body, dict) else None
    total = meta.get("total_count") if isinstance(meta, dict) else None
    return total if isinstance(total, int) else None


async def _approve_intel(settings: PublisherSettings, gateway: Gateway) -> CheckResult:
    probe = ThreatStreamRequest(
        Operation.UPDATE, "PATCH", f"/v2/intelligence/{ABSENT_ID}/", 1, json_body={"status": "inactive"}
    )
    answer = await gateway.send(probe)
    needed = (
        "upserting (TIBRIDGE_PUBLISHER_MODE=direct) and expiring by id"
        if settings.publisher.mode is PublishMode.DIRECT
        else "expiring and updating by id what it published"
    )
    return permission_probe(Permission.APPROVE_INTEL, answer.status, answer.detail, needed=needed)


async def _approve_import(settings: PublisherSettings, gateway: Gateway) -> CheckResult:
    answer = await gateway.send(approve_request(ABSENT_ID))
    publishing = settings.publisher
    needed = (
        "auto-approved import sessions (TIBRIDGE_PUBLISHER_AUTO_APPROVE=true)"
        if publishing.mode is PublishMode.APPROVAL and publishing.auto_approve
        else None
    )
    return permission_probe(Permission.APPROVE_IMPORT, answer.status, answer.detail, needed=needed)


async def _import_intelligence(settings: PublisherSettings) -> CheckResult:
    publisher, check = str(ServiceName.PUBLISHER), f"ThreatStream '{Permission.IMPORT}'"
    if settings.publisher.mode is PublishMode.DIRECT:
        return CheckResult(publisher, check, Status.OK, "not needed: direct mode does not import")
    return CheckResult(
        publisher,
        check,
        Status.UNCHECKED,
        "cannot be checked without creating an import session (ThreatStream has no call that reads a user's rights, "
        "and an import is checked for rights only after its form is valid); approval mode needs it — if it is "
        "missing, the first import is dead-lettered as ThreatStreamPermissionMissing and /readyz names it",
    )


# -- the bus ------------------------------------------------------------------------------------------------


async def _bus_checks(name: ServiceName, settings: ServiceSettings) -> list[CheckResult]:
    if settings.bus is BusKind.MEMORY:
        return [
            CheckResult(
                str(name),
                "bus",
                Status.OK,
                "in-memory bus (TIBRIDGE_BUS=memory): its topics, subscriptions and rules are made in the process "
                "from the topology; there is nothing to check",
            )
        ]
    from tibridge.common.bus.servicebus import READINESS_SUBSCRIPTION, ServiceBusBus

    results: list[CheckResult] = []
    async with contextlib.AsyncExitStack() as resources:
        from tibridge.common.runtime import bus_from_settings

        try:
            bus = await bus_from_settings(settings, resources)
        except BusError as error:
            return [CheckResult(str(name), "Service Bus", Status.FAIL, str(error))]
        assert isinstance(bus, ServiceBusBus)
        for topic in SENDS[name]:
            results.append(await _send_check(name, bus, topic))
        for topic, subscription in RECEIVES[name]:
            results.append(await _receive_check(name, bus, topic, subscription))
            if TOPOLOGY.topic(topic).subscription(subscription).rule is not None:
                results.append(await _rule_check(name, settings, topic, subscription))
        if READINESS_SUBSCRIPTION not in RECEIVES[name]:
            results.append(await _readiness_check(name, bus))
    return results


async def _readiness_check(name: ServiceName, bus: ServiceBusBus) -> CheckResult:
    """Every service's /readyz peeks at the readiness subscription (`ServiceBusBus.check`): that needs Listen too."""
    from tibridge.common.bus.servicebus import READINESS_SUBSCRIPTION

    topic, subscription = READINESS_SUBSCRIPTION
    check = f"peek at {topic}/{subscription} (readiness)"
    try:
        await bus.check()
    except BusError as error:
        return CheckResult(
            str(name),
            check,
            Status.FAIL,
            f"{error}; /readyz peeks here, which needs Azure Service Bus Data Receiver (on the namespace or this "
            "subscription)",
        )
    return CheckResult(str(name), check, Status.OK, "/readyz may peek here (Data Receiver)")


async def _send_check(name: ServiceName, bus: ServiceBusBus, topic: str) -> CheckResult:
    check = f"send to topic {topic}"
    try:
        await bus.check_send(topic)
    except BusError as error:
        return CheckResult(str(name), check, Status.FAIL, f"{error}; it needs Azure Service Bus Data Sender")
    return CheckResult(str(name), check, Status.OK, "the topic exists and the identity may send (Data Sender)")


async def _receive_check(name: ServiceName, bus: ServiceBusBus, topic: str, subscription: str) -> CheckResult:
    check = f"receive from {topic}/{subscription}"
    try:
        pending = await bus.has_pending(topic, subscription)
    except BusError as error:
        return CheckResult(str(name), check, Status.FAIL, f"{error}; it needs Azure Service Bus Data Receiver")
    held = "holds messages" if pending else "is empty"
    return CheckResult(str(name), check, Status.OK, f"the subscription exists, may be read (Data Receiver), {held}")


async def _rule_check(name: ServiceName, settings: ServiceSettings, topic: str, subscription: str) -> CheckResult:
    """The subscription's rules, read with the management API (which needs the Manage right)."""
    from azure.servicebus.aio.management import ServiceBusAdministrationClient

    check = f"rule of {topic}/{subscription}"
    connection = settings.servicebus.connection_string
    try:
        if connection is not None:
            admin = ServiceBusAdministrationClient.from_connection_string(connection.get_secret_value())
        else:
            credential = build_credential(settings.credential, f"sb://{settings.servicebus.namespace}")
            admin = ServiceBusAdministrationClient(settings.servicebus.namespace or "", credential)
        async with admin:
            rules = [
                (rule.name or "", str(getattr(rule.filter, "sql_expression", rule.filter)))
                async for rule in admin.list_rules(topic, subscription)
            ]
    except Exception as error:
        return CheckResult(
            str(name),
            check,
            Status.UNCHECKED,
            f"could not read the rules ({type(error).__name__}; reading them needs the Manage right, which the "
            "services do not have): check that it has exactly the rule "
            f"{_wanted_rule(topic, subscription)} (az servicebus topic subscription rule list)",
        )
    return rule_result(str(name), subscription, rules)


def _wanted_rule(topic: str, subscription: str) -> str:
    rule = TOPOLOGY.topic(topic).subscription(subscription).rule
    return f"{rule.name}: {rule.sql}" if rule else "$Default"
