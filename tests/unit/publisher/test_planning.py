"""The request planner: ownership-scoped lifecycle (issue 10 item 1) and import sessions that respect the analyst
(item 2), table-tested against ownership indexes built from search-shaped objects (external-apis.md §3)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.fixtures.publisher import (
    MALICIOUS,
    SUSPICIOUS,
    index_of,
    mixed_indicators,
    observable,
    request_values,
    scored_indicator,
    search_object,
)
from tibridge.common.contracts import IndicatorScored, ObservableType, Tlp, Verdict
from tibridge.publisher.mapping import intel_object
from tibridge.publisher.ownership import OwnershipIndex
from tibridge.publisher.payloads import Operation
from tibridge.publisher.planning import Item, Plan, Planner, Skip, Step
from tibridge.publisher.settings import IntelClassification, PublishingSettings, PublishMode

NOW = datetime(2026, 11, 2, tzinfo=UTC)
IP = "203.0.113.7"
DIRECT = PublishingSettings(mode=PublishMode.DIRECT)
APPROVAL = PublishingSettings(mode=PublishMode.APPROVAL)


def plan(
    indicators: list[IndicatorScored], index: OwnershipIndex | None = None, publishing: PublishingSettings = DIRECT
) -> Plan[str]:
    items = [Item(f"k{n}", scored) for n, scored in enumerate(indicators)]
    return Planner(publishing).plan(items, index or OwnershipIndex(), NOW)


def expiry(value: str = IP) -> IndicatorScored:
    return scored_indicator(observable(ObservableType.IPV4, value), None, verdict=Verdict.EXPIRE)


def ours(object_id: int, value: str = IP, itype: str = "mal_ip", **fields: Any) -> dict[str, Any]:
    return search_object(object_id, value, itype, **fields)


# -- expiry: only what tibridge published --------------------------------------------------------------------


def test_an_expiry_deactivates_each_active_object_of_ours_by_id() -> None:
    result = plan([expiry()], index_of(ours(7), ours(8, itype="suspicious_ip")))
    assert [(action.step, action.request.path, action.request.json_body) for action in result.actions] == [
        (Step.DEACTIVATE, "/v2/intelligence/7/", {"status": "inactive"}),
        (Step.DEACTIVATE, "/v2/intelligence/8/", {"status": "inactive"}),
    ]
    assert all(action.keys == ("k0",) for action in result.actions)


@pytest.mark.parametrize(
    "foreign",
    [
        pytest.param(search_object(1, IP, "mal_ip", tags=("mdti",)), id="another-source-without-our-tag"),
        pytest.param(search_object(2, IP, "mal_ip", is_public=True), id="public-while-we-publish-private"),
        pytest.param(search_object(3, IP, "mal_ip", editable=False), id="another-organisation"),
        pytest.param(search_object(4, IP, "scan_ip"), id="an-itype-we-never-publish"),
        pytest.param(search_object(5, IP, "mal_ip", status="inactive"), id="already-inactive"),
        pytest.param(search_object(6, IP, "mal_ip", status="falsepos"), id="an-analyst-marked-false-positive"),
    ],
)
def test_an_expiry_never_creates_nor_touches_what_is_not_ours_and_active(foreign: dict[str, Any]) -> None:
    result = plan([expiry()], index_of(foreign))
    assert (result.actions, dict(result.skipped)) == ((), {"k0": Skip.NOTHING_OURS})


def test_with_public_classification_our_public_objects_are_ours() -> None:
    public = PublishingSettings(mode=PublishMode.DIRECT, classification=IntelClassification.PUBLIC)
    index = index_of(ours(1, is_public=True), ours(2, is_public=False), publishing=public)
    result = plan([expiry()], index, public)
    assert [action.target.id for action in result.actions if action.target] == [1]


def test_the_owner_tag_is_a_setting() -> None:
    custom = PublishingSettings(mode=PublishMode.DIRECT, owner_tag="tibridge-prod")
    index = index_of(ours(1, tags=("tibridge",)), ours(2, tags=("tibridge-prod",)), publishing=custom)
    assert [action.target.id for action in plan([expiry()], index, custom).actions if action.target] == [2]


# -- publishing -------------------------------------------------------------------------------------------------


def test_direct_mode_upserts_new_observables_in_one_request() -> None:
    indicators = [scored_indicator(n) for n in range(5)]
    (action,) = plan(indicators).actions
    assert (action.step, action.request.operation, action.keys) == (
        Step.PUBLISH,
        Operation.UPSERT,
        ("k0", "k1", "k2", "k3", "k4"),
    )
    assert [(one.value, one.itype) for one in action.written] == [
        (scored.observable.value, "mal_ip") for scored in indicators
    ]


def test_a_republished_observable_we_hold_unchanged_needs_no_request() -> None:
    scored = scored_indicator(observable(ObservableType.IPV4), valid_until=datetime(2027, 1, 30, tzinfo=UTC))
    held = ours(7, tags=intel_object(scored, DIRECT, NOW).tags, confidence=92, severity="very-high", tlp="amber")
    result = plan([scored], index_of(held))
    assert (result.actions, dict(result.skipped)) == ((), {"k0": Skip.UNCHANGED})


def test_a_changed_observable_of_ours_is_upserted_again_under_its_itype() -> None:
    scored = scored_indicator(observable(ObservableType.IPV4), valid_until=datetime(2027, 3, 1, tzinfo=UTC))
    (action,) = plan([scored], index_of(ours(7))).actions
    assert action.request.operation is Operation.UPSERT


def test_an_itype_change_updates_our_object_by_id_and_retires_the_others() -> None:
    scored = scored_indicator(observable(ObservableType.IPV4), SUSPICIOUS)
    result = plan([scored], index_of(ours(7, itype="mal_ip"), ours(8, itype="c2_ip")))
    (update,) = result.actions
    assert (update.step, update.request.path) == (Step.UPDATE, "/v2/intelligence/7/")
    assert update.request.json_body is not None
    assert update.request.json_body["itype"] == "suspicious_ip"
    result = plan([scored], index_of(ours(7, itype="mal_ip"), ours(8, itype="suspicious_ip")))
    assert [(action.step, action.request.path) for action in result.actions] == [
        (Step.UPDATE, "/v2/intelligence/8/"),
        (Step.DEACTIVATE, "/v2/intelligence/7/"),
    ]


def test_what_an_analyst_marked_false_positive_is_left_alone() -> None:
    result = plan([scored_indicator(observable(ObservableType.IPV4))], index_of(ours(7, status="falsepos")))
    assert (result.actions, dict(result.skipped)) == ((), {"k0": Skip.FALSE_POSITIVE})


def test_approval_mode_updates_approved_intelligence_by_id_rather_than_queueing_it_again() -> None:
    until = datetime(2027, 6, 1, tzinfo=UTC)
    scored = scored_indicator(observable(ObservableType.IPV4), valid_until=until)
    # Held by an earlier session whose expiry is later, within the slack: nothing to do.
    covered = index_of(ours(7, expiration=until + timedelta(days=30)))
    assert dict(plan([scored], covered, APPROVAL).skipped) == {"k0": Skip.UNCHANGED}
    # Upstream extended ValidUntil past what ThreatStream holds: a change by id, no new session.
    (action,) = plan([scored], index_of(ours(7, expiration=until - timedelta(days=30))), APPROVAL).actions
    assert (action.step, action.request.path, action.request.json_body["expiration_ts"]) == (  # type: ignore[index]
        Step.UPDATE,
        "/v2/intelligence/7/",
        "2027-06-01T00:00:00Z",
    )


# -- import sessions --------------------------------------------------------------------------------------------


def sessions(result: Plan[str]) -> list[dict[str, str]]:
    return [dict(action.request.form) for action in result.actions if action.request.operation is Operation.IMPORT]


def test_approval_mode_puts_every_kind_into_one_session_when_the_profile_agrees() -> None:
    kinds = list(ObservableType)
    (form,) = sessions(plan([scored_indicator(observable(kind), MALICIOUS) for kind in kinds], publishing=APPROVAL))
    assert len(form["datatext"].split("\n")) == len(kinds)
    mappings = {name: value for name, value in form.items() if name.endswith("_mapping")}
    assert mappings == {
        "ip_mapping": "mal_ip",  # IPv4 and IPv6 alike
        "domain_mapping": "mal_domain",
        "url_mapping": "mal_url",
        "md5_mapping": "mal_md5",
        "email_mapping": "mal_email",
    }


def test_an_ipv6_never_shares_a_session_whose_ip_mapping_has_no_ipv6_form() -> None:
    suspicious_ip = scored_indicator(observable(ObservableType.IPV4), SUSPICIOUS)
    ipv6 = scored_indicator(observable(ObservableType.IPV6), MALICIOUS)
    forms = sessions(plan([suspicious_ip, ipv6], publishing=APPROVAL))
    assert sorted((form["ip_mapping"], form["datatext"]) for form in forms) == [
        ("mal_ip", "2001:db8::7"),
        ("suspicious_ip", "203.0.113.7"),
    ]


def test_sessions_keep_tlp_exact_and_state_the_lowest_confidence_and_severity() -> None:
    indicators = [
        scored_indicator(observable(ObservableType.DOMAIN, f"d{n}.example.com"), MALICIOUS, tlp=tlp, confidence=c)
        for n, (tlp, c) in enumerate([(Tlp.AMBER, 1), (Tlp.GREEN, 1), (Tlp.AMBER, 1)])
    ]
    lower = MALICIOUS.model_copy(update={"score": 77})
    indicators.append(scored_indicator(observable(ObservableType.DOMAIN, "d3.example.com"), lower, tlp=Tlp.AMBER))
    forms = sessions(plan(indicators, publishing=APPROVAL))
    by_tlp = {json.loads(form["tags"])[0]["tlp"]: form for form in forms}
    assert sorted(by_tlp) == ["amber", "green"]
    amber = by_tlp["amber"]
    assert (len(amber["datatext"].split("\n")), amber["confidence"], amber["severity"]) == (3, "77", "high")


def test_a_session_never_states_an_expiry_earlier_nor_too_much_later_than_its_observables() -> None:
    """Each observable's expiry is at most the slack (50 %) of its remaining lifetime later, never earlier."""
    days = [300, 250, 200, 150, 100, 60, 40, 30, 20, 10, 5, 2, 1]
    indicators = [
        scored_indicator(observable(ObservableType.DOMAIN, f"e{d}.example.com"), valid_until=NOW + timedelta(days=d))
        for d in days
    ]
    forms = sessions(plan(indicators, publishing=APPROVAL))
    stated = {
        value: datetime.fromisoformat(form["expiration_ts"].replace("Z", "+00:00"))
        for form in forms
        for value in form["datatext"].split("\n")
    }
    for d in days:
        own = NOW + timedelta(days=d)
        assert own <= stated[f"e{d}.example.com"] <= own + 0.5 * (own - NOW)
    # One per factor of 1.5 in remaining lifetime, not one per week.
    assert len(forms) <= 8


def test_sessions_share_only_the_tags_every_observable_has() -> None:
    one = scored_indicator(observable(ObservableType.DOMAIN, "a.example.com"), MALICIOUS)
    two = scored_indicator(
        observable(ObservableType.DOMAIN, "b.example.com"), MALICIOUS.model_copy(update={"rules": ()})
    )
    (form,) = sessions(plan([one, two], publishing=APPROVAL))
    shared = ["tibridge", "mdti", "Microsoft Threat Intelligence", "Microsoft Defender Threat Intelligence"]
    assert [tag["name"] for tag in json.loads(form["tags"])] == shared  # not the rules only `one` has


def test_a_mixed_batch_needs_a_session_per_threat_type_tlp_and_expiry_only() -> None:
    forms = sessions(plan(mixed_indicators(600), publishing=APPROVAL))
    assert len(forms) == 2 * 2 * 2
    assert sum(len(form["datatext"].split("\n")) for form in forms) == 600


def test_no_session_holds_more_than_a_batch() -> None:
    small = PublishingSettings(mode=PublishMode.APPROVAL, batch_size=4, max_in_flight=8)
    forms = sessions(plan([scored_indicator(n) for n in range(10)], publishing=small))
    assert [len(form["datatext"].split("\n")) for form in forms] == [4, 4, 2]


def test_expiries_never_go_into_an_import_session() -> None:
    result = plan([expiry(), scored_indicator(1)], index_of(ours(7)), APPROVAL)
    assert [action.request.operation for action in result.actions] == [Operation.UPDATE, Operation.IMPORT]
    assert request_values(result.actions[1].request) == [scored_indicator(1).observable.value]


# -- poison -------------------------------------------------------------------------------------------------------


def test_a_year_9999_valid_until_is_planned_in_both_modes() -> None:
    scored = scored_indicator(1, valid_until=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    for publishing in (DIRECT, APPROVAL):
        result = plan([scored], publishing=publishing)
        assert (len(result.actions), dict(result.refused)) == (1, {})


def test_one_observable_that_cannot_be_mapped_is_refused_and_the_rest_planned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    poison = scored_indicator(13)
    real = intel_object

    def mapping(scored: IndicatorScored, publishing: PublishingSettings, now: datetime) -> Any:
        if scored.observable == poison.observable:
            raise OverflowError("date value out of range")
        return real(scored, publishing, now)

    monkeypatch.setattr("tibridge.publisher.planning.intel_object", mapping)
    result = plan([scored_indicator(1), poison, scored_indicator(2)])
    assert dict(result.refused) == {
        "k1": "the publisher could not map it to ThreatStream (OverflowError: date value out of range)"
    }
    (action,) = result.actions
    assert action.keys == ("k0", "k2")
