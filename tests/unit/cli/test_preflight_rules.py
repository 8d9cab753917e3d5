"""How preflight reads a rights probe and a subscription's rules, and its exit code."""

from tibridge.cli.preflight import CheckResult, Status, exit_code_of, permission_probe, rule_result
from tibridge.publisher.payloads import Permission


def test_a_403_names_the_permission_and_fails_only_when_needed() -> None:
    lacking = "the ThreatStream user lacks the 'Approve Intel' permission"
    needed = permission_probe(Permission.APPROVE_INTEL, 403, lacking, needed="expiring by id")
    assert needed.status is Status.FAIL
    assert "'Approve Intel'" in needed.detail
    assert "expiring by id" in needed.detail
    spare = permission_probe(Permission.APPROVE_IMPORT, 403, "lacks 'Approve Import'", needed=None)
    assert spare.status is Status.OK
    assert "does not need it" in spare.detail


def test_a_404_is_not_refused_and_anything_else_fails() -> None:
    assert permission_probe(Permission.APPROVE_INTEL, 404, "", needed="x").status is Status.OK
    assert permission_probe(Permission.APPROVE_INTEL, 500, "boom", needed="x").status is Status.FAIL
    assert permission_probe(Permission.APPROVE_INTEL, None, "unreachable", needed=None).status is Status.FAIL


def test_the_rule_must_be_exactly_the_topologys() -> None:
    exact = rule_result("publisher", "publisher", [("publish-or-expire", "verdict IN ('publish', 'expire')")])
    assert exact.status is Status.OK
    default = rule_result("publisher", "publisher", [("$Default", "1=1")])
    assert default.status is Status.FAIL
    assert "publish-or-expire" in default.detail
    assert rule_result("publisher", "publisher", []).status is Status.FAIL


def test_unchecked_items_do_not_fail_the_run() -> None:
    ok = CheckResult("scorer", "a", Status.OK, "")
    unchecked = CheckResult("publisher", "b", Status.UNCHECKED, "")
    failed = CheckResult("collector", "c", Status.FAIL, "")
    assert exit_code_of([ok, unchecked]) == 0
    assert exit_code_of([ok, failed]) == 1
