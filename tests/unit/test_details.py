"""The Web UI's current details: a short block per non-passing check, and the approve JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from workflows.details import change_details
from workflows.models import Approval, ChangeStatus, CheckResult, OptOutRule, Phase
from workflows.report import aggregate, check_block, report_markdown

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def _check(rule: str, status: str = "fail", **kw: object) -> CheckResult:
    return CheckResult.model_validate(
        {"rule": rule, "guardrail": "change-window", "category": "timing", "status": status, **kw}
    )


def test_a_failing_check_is_a_block_with_why_remedy_owner_and_approvers() -> None:
    """Rule, status, why, to pass, owner, who may approve, each on its own short line."""
    check = _check(
        "business-hours",
        reason="Sat 10:00 is outside Mon-Thu 09:00-16:00",
        remedy="wait for Mon 09:00 or get an approval",
        owner="release-eng",
        approvers=["sre-leads"],
        approval=OptOutRule(approvers=["sre-leads"]),
    )
    assert check_block(check) == [
        "#### FAIL · business-hours (change-window)",
        "",
        "- **why:** Sat 10:00 is outside Mon-Thu 09:00-16:00",
        "- **to pass:** wait for Mon 09:00 or get an approval",
        "- **owner:** release-eng",
        "- **who may approve:** sre-leads (1 approval, not the requester, up to 4h)",
        "",
    ]


def test_forbidden_and_shadow_checks_say_who_may_approve_plainly() -> None:
    """A forbidden rule: nobody, fix it; a shadow failure never blocks."""
    forbidden = check_block(_check("env", opt_out="forbidden"))
    shadow = check_block(_check("canary", mode="shadow"))
    assert forbidden[-2] == (
        "- **who may approve:** nobody: this rule may not be opted out of; fix the cause, then "
        "recheck"
    )
    assert (
        shadow[0]
        == "#### FAIL · canary (change-window) · shadow: would have blocked, decides nothing"
    )
    assert shadow[-2] == "- **who may approve:** nobody needs to: a shadow rule never blocks"


def test_the_report_has_no_table_and_lists_passing_rules_on_one_line() -> None:
    """No markdown table (it ran off the panel); passing rules are named together."""
    report = aggregate(
        [_check("a", reason="x | y"), _check("b", "pass"), _check("c", "pass")],
        policy_hash="p",
        now=NOW,
    )
    text = report_markdown(report)
    assert "|---" not in text and "x \\| y" in text
    assert text.endswith("**passing (2):** b (change-window), c (change-window)")


def test_awaiting_approval_shows_the_exact_approve_payload() -> None:
    """The JSON to paste names the rules still needed and the current report hash; it decodes."""
    report = aggregate(
        [_check("b-rule", approvers=["sre"]), _check("a-rule", approvers=["sre"])],
        policy_hash="p",
        now=NOW,
    )
    status = ChangeStatus(
        change_id="chg-1",
        phase=Phase.AWAITING_APPROVAL,
        message="blocked by b-rule, a-rule",
        report=report,
        still_needed={"b-rule": 1, "a-rule": 1},
    )
    text = change_details("chg-1", status)
    payload = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert payload == {
        "guardrails": ["a-rule", "b-rule"],
        "approver": "<your name>",
        "reason": "<why it is safe to go ahead>",
        "report_hash": report.report_hash,
    }
    filled = payload | {"approver": "bob", "reason": "hotfix"}
    assert Approval.model_validate(filled).report_hash == report.report_hash
    assert (
        max(len(line) for line in text.split("```json\n", 1)[1].split("\n```")[0].split("\n")) < 90
    )
    blocked = status.model_copy(update={"phase": Phase.BLOCKED})
    assert "```json" not in change_details("chg-1", blocked)
