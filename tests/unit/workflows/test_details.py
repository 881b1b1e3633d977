"""The Web UI's current details: a short block per non-passing check, and the approve JSON."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities
from tests import fakes
from tests.fakes import Ledger, RecordingKind, Switch
from tests.helpers import until_phase
from worker.main import build_worker
from workflows.details import change_details
from workflows.models import (
    Approval,
    ApprovalResult,
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    CheckResult,
    OperatorAction,
    OptOutRule,
    Outcome,
    Phase,
)
from workflows.report import aggregate, check_block, report_markdown

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


@pytest.fixture
def operators() -> str:
    return "operators:\n  bob: [sre-leads]\n"


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


async def test_the_pasted_json_follows_each_accepted_approval(
    env: WorkflowEnvironment, task_queue: str, audit: AuditActivities
) -> None:
    """After one of two rules is approved, the current details' JSON names only the other."""
    RecordingKind.ledger = Ledger()
    Switch.outcome = "fail"
    approvable = {"approvers": ["sre-leads"]}
    req = ChangeRequest(
        change_id=f"det-{uuid.uuid4().hex[:8]}",
        kind="recording",
        summary="two approvals",
        requester="alice",
        team="web",
        environment="prod",
        targets=[{"id": "t1"}],  # type: ignore[list-item]
        policy={
            "guardrails": [
                {"use": "switch", "opt_out": approvable},
                {"use": "fake-timing", "opt_out": approvable, "params": {"outcome": "fail"}},
            ]
        },
    )
    async with build_worker(
        env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=audit,
    ):
        handle = await env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        status = await until_phase(handle, Phase.AWAITING_APPROVAL)
        assert status.report is not None
        assert _pasted(await _current_details(handle))["guardrails"] == ["fake-timing", "switch"]
        approval = Approval(
            guardrails=["switch"],
            approver="bob",
            reason="hotfix",
            report_hash=status.report.report_hash,
        )
        await handle.execute_update("approve", approval, result_type=ApprovalResult)
        assert _pasted(await _current_details(handle))["guardrails"] == ["fake-timing"]
        await handle.execute_update(
            "abort", OperatorAction(operator="bob", reason="test over"), result_type=dict
        )
        assert (await handle.result()).outcome is Outcome.ABORTED


def _pasted(details: str) -> Any:
    return json.loads(details.split("```json\n", 1)[1].split("\n```", 1)[0])


async def _current_details(handle: WorkflowHandle[Any, ChangeResult]) -> str:
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details
