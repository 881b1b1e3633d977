"""Approval rules (pure): every rejection reason, four eyes, two approvers, expiry, carry-over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from workflows.approvals import approval_problem, grant, still_needed
from workflows.models import (
    Approval,
    Category,
    CheckResult,
    CheckStatus,
    Directory,
    GrantedApproval,
    GuardrailReport,
    OptOut,
    OptOutRule,
)
from workflows.report import aggregate

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DIRECTORY = Directory(
    operators={
        "alice": ["web-team"],
        "bob": ["sre-leads"],
        "carol": ["sre-leads", "release-managers"],
        "dave": ["interns"],
    }
)
RULE = OptOutRule(approvers=["sre-leads"], max_duration=timedelta(hours=4))


def _check(name: str, status: CheckStatus = CheckStatus.FAIL, **kw: object) -> CheckResult:
    fields: dict[str, object] = {
        "guardrail": name,
        "category": Category.TIMING,
        "status": status,
        "reason": "r",
        "remedy": "do the thing",
        "owner": "o",
        "approval": RULE,
        "approvers": RULE.approvers,
    }
    fields.update(kw)
    return CheckResult.model_validate(fields)


def _report(*checks: CheckResult) -> GuardrailReport:
    return aggregate(list(checks), policy_hash="p1", now=NOW)


REPORT = _report(
    _check("change-window"),
    _check("http-health", CheckStatus.PASS),
    _check("environment-boundary", opt_out=OptOut.FORBIDDEN, approval=None, approvers=[]),
    _check("no-rule", approval=None, approvers=[]),
)


def _approve(who: str, *names: str, report: GuardrailReport = REPORT, **kw: object) -> Approval:
    fields: dict[str, object] = {
        "guardrails": list(names),
        "approver": who,
        "reason": "emergency fix",
        "report_hash": report.report_hash,
    }
    fields.update(kw)
    return Approval.model_validate(fields)


def _problem(
    a: Approval, *, granted: list[GrantedApproval] | None = None, **kw: object
) -> str | None:
    args: dict[str, object] = {
        "report": REPORT,
        "awaiting": True,
        "directory": DIRECTORY,
        "requester": "alice",
        "granted": granted or [],
        "now": NOW,
    }
    args.update(kw)
    return approval_problem(a, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("approval", "kw", "expected"),
    [
        (
            _approve("bob", "change-window"),
            {"awaiting": False},
            "the change is not awaiting approval",
        ),
        (
            _approve("bob", "change-window", report_hash="feedbeef"),
            {},
            "report_hash 'feedbeef' is stale",
        ),
        (
            _approve("bob", "change-window"),
            {"directory": None},
            "the operator directory is not loaded",
        ),
        (
            _approve("mallory", "change-window"),
            {},
            "approver 'mallory' is not in the operator directory",
        ),
        (
            _approve("dave", "change-window"),
            {},
            "dave is not in the approver groups of change-window (sre-leads)",
        ),
        (
            _approve("bob", "http-health"),
            {},
            "http-health is not failing: there is nothing to approve",
        ),
        (_approve("bob", "nope"), {}, "nope is not a check of this report"),
        (
            _approve("bob", "environment-boundary"),
            {},
            "environment-boundary is forbidden to opt out of; fix the cause instead: do the thing",
        ),
        (
            _approve("bob", "no-rule"),
            {},
            "no-rule has no approval rule in the policy; nobody can approve it",
        ),
        (
            _approve("bob", "change-window"),
            {"requester": "bob"},
            "four eyes: bob requested this change and cannot approve change-window",
        ),
    ],
)
def test_every_rejection_reason(approval: Approval, kw: dict[str, object], expected: str) -> None:
    """Each way an approval can be wrong is refused with a reason naming the fix."""
    problem = _problem(approval, **kw)
    assert problem is not None and problem.startswith(expected), problem


def test_valid_approval_accepted_and_capped_by_policy() -> None:
    """A qualified approver is accepted; expiry is capped by the rule's max_duration."""
    a = _approve("bob", "change-window", expires_in="12h")
    assert _problem(a) is None
    [g] = grant(a, report=REPORT, now=NOW)
    assert (g.guardrail, g.approver, g.expires_at) == (
        "change-window",
        "bob",
        NOW + timedelta(hours=4),
    )


def test_same_approver_twice_refused_and_two_approvers_needed() -> None:
    """With required=2, one approver is not enough and cannot approve twice; a second one is."""
    two = RULE.model_copy(update={"required": 2})
    report = _report(_check("change-window", approval=two))
    first = grant(_approve("bob", "change-window", report=report), report=report, now=NOW)
    assert still_needed(report, first, NOW) == {"change-window": 1}
    again = _approve("bob", "change-window", report=report)
    assert _problem(again, report=report, granted=first) == (
        "bob has already approved change-window; a second approver is needed"
    )
    second = grant(_approve("carol", "change-window", report=report), report=report, now=NOW)
    assert still_needed(report, first + second, NOW) == {}


def test_expired_approval_covers_nothing() -> None:
    """An approval past its expiry no longer covers the failure."""
    report = _report(_check("change-window"))
    granted = grant(
        _approve("bob", "change-window", report=report, expires_in="1h"), report=report, now=NOW
    )
    assert still_needed(report, granted, NOW + timedelta(minutes=59)) == {}
    assert still_needed(report, granted, NOW + timedelta(minutes=61)) == {"change-window": 1}


def test_approvals_carry_over_only_to_a_subset_of_the_same_failures() -> None:
    """A later report with fewer failures stays covered; a new or changed failure does not."""
    both = _report(_check("change-window"), _check("http-health"))
    granted = grant(
        _approve("bob", "change-window", "http-health", report=both), report=both, now=NOW
    )
    fewer = _report(_check("change-window"))
    assert still_needed(fewer, granted, NOW) == {}
    more = _report(_check("change-window"), _check("prometheus-query"))
    assert still_needed(more, granted, NOW) == {"prometheus-query": 1, "change-window": 1}
    changed = _report(_check("change-window", CheckStatus.ERROR), _check("http-health"))
    assert still_needed(changed, granted, NOW) == {"change-window": 1, "http-health": 1}


def test_forbidden_failure_can_never_be_covered() -> None:
    """No set of approvals covers a forbidden failure (I2)."""
    report = _report(_check("environment-boundary", opt_out=OptOut.FORBIDDEN, approval=None))
    fake = [
        GrantedApproval(
            guardrail="environment-boundary",
            approver=n,
            reason="x",
            report_hash=report.report_hash,
            approved_at=NOW,
            expires_at=NOW + timedelta(hours=1),
            signature={"environment-boundary": "fail"},
        )
        for n in ("bob", "carol")
    ]
    assert still_needed(report, fake, NOW) == {"environment-boundary": 1}


def test_approvals_name_rule_ids_not_plug_ins() -> None:
    """Two rules of one guardrail: an approval names one by its id and covers only that one."""
    report = _report(
        _check("http-health", rule="web-health"),
        _check("http-health", rule="db-health"),
    )
    by_plugin = _approve("bob", "http-health", report=report)
    assert _problem(by_plugin, report=report) == (
        "http-health is not a check of this report (failing: web-health, db-health)"
    )
    one = _approve("bob", "db-health", report=report)
    assert _problem(one, report=report) is None
    granted = grant(one, report=report, now=NOW)
    assert [(g.guardrail, g.signature) for g in granted] == [
        ("db-health", {"web-health": "fail", "db-health": "fail"})
    ]
    assert still_needed(report, granted, NOW) == {"web-health": 1}
