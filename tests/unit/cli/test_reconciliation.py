"""The diff of desired against actual state and the repairs it makes (tibridge.publisher.reconciliation)."""

from datetime import UTC, datetime, timedelta

from tibridge.common.contracts import (
    InactiveReason,
    IndicatorCollected,
    IndicatorScored,
    Observable,
    ObservableType,
    Verdict,
    envelope_for,
)
from tibridge.publisher.ownership import OwnedObject
from tibridge.publisher.reconciliation import (
    NOT_IN_SENTINEL,
    actual_state,
    desired_state,
    diff,
    observable_of,
    repairs,
)

NOW = datetime(2026, 12, 2, 12, tzinfo=UTC)
SETTLED = NOW - timedelta(minutes=1)


def scored(
    value: str, verdict: Verdict, *, at: datetime = NOW - timedelta(hours=1), reason: str = "r"
) -> IndicatorScored:
    inactive = verdict is Verdict.EXPIRE
    indicator = IndicatorCollected(
        observable=Observable(type=ObservableType.DOMAIN, value=value),
        indicator_id=f"id-{value}-{at.isoformat()}",
        upstream_version=at.isoformat(),
        source_system="Microsoft Defender Threat Intelligence",
        time_generated=at,
        active=not inactive,
        inactive_reason=InactiveReason.REVOKED if inactive else None,
    )
    return IndicatorScored(indicator=indicator, verdict=verdict, reason=reason)


def owned(
    object_id: int, value: str, status: str = "active", *, update_id: int = 1, modified: datetime | None = None
) -> OwnedObject:
    return OwnedObject(
        id=object_id,
        value=value,
        itype="mal_domain",
        status=status,
        update_id=update_id,
        expiration=None,
        confidence=None,
        severity=None,
        tlp=None,
        tags=frozenset({"tibridge"}),
        modified=modified or NOW - timedelta(hours=2),
    )


def test_each_kind_of_difference_is_found_exactly() -> None:
    desired = desired_state(
        [
            scored("missing.example", Verdict.PUBLISH),
            scored("synced.example", Verdict.PUBLISH),
            scored("stale.example", Verdict.EXPIRE),
            scored("gone.example", Verdict.EXPIRE),
            scored("dropped.example", Verdict.DROP, reason="below_threshold"),
            scored("flagged.example", Verdict.PUBLISH),
        ]
    )
    held = [
        owned(1, "synced.example"),
        owned(2, "stale.example"),
        owned(3, "dropped.example"),
        owned(4, "stranger.example"),
        owned(5, "flagged.example", "falsepos"),
    ]
    drift = diff(desired, held, settled_before=SETTLED)
    assert [s.observable.value for s in drift.missing] == ["missing.example"]
    assert [(s.scored.observable.value, [o.id for o in s.active]) for s in drift.stale] == [("stale.example", [2])]
    assert [(u.obj.id, u.why) for u in drift.unexpected] == [
        (3, "the verdict is drop (below_threshold)"),
        (4, NOT_IN_SENTINEL),
    ]
    assert (drift.in_sync, drift.false_positive, drift.settling, drift.differences) == (2, 1, 0, 4)


def test_values_changed_within_the_settle_time_are_not_judged() -> None:
    desired = desired_state([scored("new.example", Verdict.PUBLISH), scored("moving.example", Verdict.EXPIRE)])
    held = [owned(1, "moving.example", modified=NOW), owned(2, "fresh.example", modified=NOW)]
    drift = diff(desired, held, settled_before=SETTLED)
    assert drift.settling == 2
    assert [s.observable.value for s in drift.missing] == ["new.example"]
    assert (drift.stale, drift.unexpected) == ((), ())


def test_the_newest_indicator_decides_and_the_newest_state_of_an_object_counts() -> None:
    older = scored("flip.example", Verdict.PUBLISH, at=NOW - timedelta(days=3))
    newer = scored("flip.example", Verdict.EXPIRE, at=NOW - timedelta(days=1))
    assert desired_state([newer, older])["flip.example"] is newer
    first, later = owned(7, "flip.example", "active", update_id=5), owned(7, "flip.example", "falsepos", update_id=9)
    assert actual_state([[later], [first]]) == [later]


def test_repairs_carry_new_ids_and_expire_what_nobody_wants() -> None:
    missing, stale = scored("missing.example", Verdict.PUBLISH), scored("stale.example", Verdict.EXPIRE)
    drift = diff(
        desired_state([missing, stale]),
        [owned(2, "stale.example"), owned(4, "stranger.example"), owned(5, "stranger.example")],
        settled_before=SETTLED,
    )
    messages = repairs(drift, NOW)
    assert [(m.observable.value, m.verdict) for m in messages] == [
        ("missing.example", Verdict.PUBLISH),
        ("stale.example", Verdict.EXPIRE),
        ("stranger.example", Verdict.EXPIRE),  # one message for both of its objects
    ]
    # A repair is not the lost message again (duplicate detection would drop it), but keeps its indicator time.
    assert envelope_for(messages[0]).message_id != envelope_for(missing).message_id
    assert messages[0].indicator.time_generated == missing.indicator.time_generated
    assert messages[2].indicator.inactive_reason is InactiveReason.INACTIVE
    assert messages[2].reason == f"reconcile: {NOT_IN_SENTINEL}"


def test_an_object_tells_its_observable_by_its_itype() -> None:
    ipv6 = OwnedObject(1, "2001:db8::1", "mal_ipv6", "active", 1, None, None, None, None, frozenset())
    digest = OwnedObject(2, "a" * 64, "mal_md5", "active", 1, None, None, None, None, frozenset())
    ipv4 = OwnedObject(3, "8.8.8.8", "suspicious_ip", "active", 1, None, None, None, None, frozenset())
    assert observable_of(ipv6).type is ObservableType.IPV6
    assert (observable_of(digest).type, str(observable_of(digest).hash_algorithm)) == (
        ObservableType.FILE_HASH,
        "sha256",
    )
    assert observable_of(ipv4).type is ObservableType.IPV4


def test_a_whitelisted_value_is_refused_not_missing() -> None:
    desired = desired_state([scored("allowed.example", Verdict.PUBLISH), scored("gap.example", Verdict.PUBLISH)])
    drift = diff(desired, [], settled_before=SETTLED, whitelist=frozenset({"allowed.example"}))
    assert [s.observable.value for s in drift.missing] == ["gap.example"]
    assert drift.whitelisted == 1
