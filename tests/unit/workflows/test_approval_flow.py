"""Approvals end to end in GuardedChange (time-skipping): update, signal, audit, deadline, expiry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities, SqliteAuditStore
from tests import fakes
from tests.builders import change_request, new_change_id, target_list
from tests.fakes import Ledger, RecordingKind, Switch
from tests.helpers import until_phase
from worker.main import build_worker
from workflows.models import (
    Approval,
    ApprovalResult,
    AuditAction,
    AuditQuery,
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    Outcome,
    Phase,
)

OPERATORS = """\
operators:
  alice: [web-team, sre-leads]
  bob: [sre-leads]
  carol: [sre-leads]
  dave: [interns]
"""


@pytest.fixture(autouse=True)
def reset() -> Ledger:
    RecordingKind.ledger = Ledger()
    Switch.outcome = "fail"
    return RecordingKind.ledger


@pytest.fixture
def operators() -> str:
    return OPERATORS


def _request(
    rule: Any = None,
    *,
    use: str = "switch",
    waves: list[str] | None = None,
    bake: str = "0s",
    deadline_hours: int = 24,
) -> ChangeRequest:
    guardrail: dict[str, Any] = {"use": use}
    guardrail["opt_out"] = rule if rule is not None else {"approvers": ["sre-leads"]}
    return change_request(
        change_id=new_change_id("appr"),
        summary="needs approval",
        team="web",
        targets=target_list(2),
        rollout={"waves": waves or ["100%"], "bake": bake},
        policy={"guardrails": [guardrail]},
    )


async def _start(
    env: WorkflowEnvironment, req: ChangeRequest, tq: str
) -> WorkflowHandle[Any, ChangeResult]:
    return await env.client.start_workflow(
        "GuardedChange", req, id=req.change_id, task_queue=tq, result_type=ChangeResult
    )


def _worker(env: WorkflowEnvironment, tq: str, audit: AuditActivities):  # type: ignore[no-untyped-def]
    return build_worker(
        env.client, task_queue=tq, guardrails=fakes.guardrails(), kinds=fakes.kinds(), audit=audit
    )


def _approval(status: ChangeStatus, who: str, guardrail: str = "switch", **kw: Any) -> Approval:
    assert status.report is not None
    return Approval(
        guardrails=[guardrail],
        approver=who,
        reason="hotfix for incident 42",
        report_hash=status.report.report_hash,
        **kw,
    )


async def test_four_eyes_then_qualified_approval_proceeds_and_is_audited(
    env: WorkflowEnvironment,
    task_queue: str,
    audit: AuditActivities,
    store: SqliteAuditStore,
    reset: Ledger,
) -> None:
    """The requester's own approval is refused; a qualified approver's lets it run; both audited."""
    req = _request()
    async with _worker(env, task_queue, audit):
        handle = await _start(env, req, task_queue)
        status = await until_phase(handle, Phase.AWAITING_APPROVAL)
        assert status.awaiting_from == ["sre-leads"]
        assert reset.applied == []

        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                "approve", _approval(status, "alice"), result_type=ApprovalResult
            )
        assert (
            refused.value.cause.message
            == "four eyes: alice requested this change and cannot approve switch"
        )

        await handle.signal("approve_signal", _approval(status, "dave"))
        result = await handle.execute_update(
            "approve", _approval(status, "bob"), result_type=ApprovalResult
        )
        assert result == ApprovalResult(accepted=["switch"], still_needed={})
        final = await handle.result()
        after = await handle.query("status", result_type=ChangeStatus)
    assert final.outcome is Outcome.COMPLETED
    assert sorted(reset.applied) == ["t1", "t2"]
    assert [r.approver for r in after.rejected_approvals] == ["dave"]
    story = store.list(AuditQuery(change_id=req.change_id))
    assert [r.action for r in story] == [
        AuditAction.STARTED,
        AuditAction.GATE,
        AuditAction.APPROVAL_REJECTED,
        AuditAction.APPROVAL,
        AuditAction.PLAN,
        AuditAction.MUTATION,
        AuditAction.MUTATION,
        AuditAction.OUTCOME,
    ]
    records = [
        r for r in story if r.action in (AuditAction.APPROVAL_REJECTED, AuditAction.APPROVAL)
    ]
    assert [(r.action, r.actor, r.guardrail) for r in records] == [
        (AuditAction.APPROVAL_REJECTED, "dave", "switch"),
        (AuditAction.APPROVAL, "bob", "switch"),
    ]
    approval = records[1]
    assert approval.report_hash == status.report.report_hash  # type: ignore[union-attr]
    assert approval.reason == "hotfix for incident 42"
    assert approval.expires_at is not None and approval.expires_at > approval.at


async def test_two_approvers_required(
    env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, reset: Ledger
) -> None:
    """With required: 2 one approval leaves it waiting; the same approver twice is refused."""
    req = _request({"approvers": ["sre-leads"], "required": 2})
    async with _worker(env, task_queue, audit):
        handle = await _start(env, req, task_queue)
        status = await until_phase(handle, Phase.AWAITING_APPROVAL)
        first = await handle.execute_update(
            "approve", _approval(status, "bob"), result_type=ApprovalResult
        )
        assert first.still_needed == {"switch": 1}
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                "approve", _approval(status, "bob"), result_type=ApprovalResult
            )
        assert reset.applied == []
        await handle.execute_update(
            "approve", _approval(status, "carol"), result_type=ApprovalResult
        )
        assert (await handle.result()).outcome is Outcome.COMPLETED


async def test_forbidden_guardrail_cannot_be_approved(
    env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, reset: Ledger
) -> None:
    """A forbidden failure is Blocked; no approval passes the validator; nothing is applied."""
    req = _request("forbidden")
    async with _worker(env, task_queue, audit):
        handle = await _start(env, req, task_queue)
        status = await until_phase(handle, Phase.BLOCKED)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                "approve", _approval(status, "bob"), result_type=ApprovalResult
            )
        assert refused.value.cause.message == (
            "switch is forbidden to opt out of; fix the cause instead: turn the switch on"
        )
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert reset.applied == []


async def test_stale_report_hash_refused(
    env: WorkflowEnvironment, task_queue: str, audit: AuditActivities
) -> None:
    """An approval bound to another report is refused with the current hash named."""
    req = _request()
    async with _worker(env, task_queue, audit):
        handle = await _start(env, req, task_queue)
        status = await until_phase(handle, Phase.AWAITING_APPROVAL)
        stale = _approval(status, "bob").model_copy(update={"report_hash": "0000"})
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update("approve", stale, result_type=ApprovalResult)
        assert refused.value.cause.message.startswith("report_hash '0000' is stale")
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()


async def test_approval_deadline_ends_rejected_and_audited(
    env: WorkflowEnvironment,
    task_queue: str,
    audit: AuditActivities,
    store: SqliteAuditStore,
    reset: Ledger,
) -> None:
    """Nobody approves before the deadline: the change ends rejected, with an audit record."""
    req = _request()
    async with _worker(env, task_queue, audit):
        result = await (await _start(env, req, task_queue)).result()
    assert result.outcome is Outcome.REJECTED
    assert reset.applied == []
    records = store.list(AuditQuery(change_id=req.change_id))
    [record] = [r for r in records if r.action is AuditAction.DEADLINE]
    assert record.actor == "changeguard"
    assert [r.action for r in records][-2:] == [AuditAction.DEADLINE, AuditAction.OUTCOME]


async def test_expired_approval_must_be_renewed_before_a_later_wave(
    env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, reset: Ledger
) -> None:
    """An approval expires; the re-check before wave 2 needs a fresh approval to go on."""
    req = _request(use="timing-switch", waves=["1", "100%"], bake="2h")
    async with _worker(env, task_queue, audit):
        handle = await _start(env, req, task_queue)
        status = await until_phase(handle, Phase.AWAITING_APPROVAL)
        await handle.execute_update(
            "approve",
            _approval(status, "bob", "timing-switch", expires_in="1h"),
            result_type=ApprovalResult,
        )
        await until_phase(handle, Phase.BAKING)
        assert len(reset.applied) == 1
        await env.sleep(timedelta(hours=2, minutes=1))
        again = await until_phase(handle, Phase.AWAITING_APPROVAL)
        assert again.still_needed == {"timing-switch": 1}
        assert len(reset.applied) == 1
        await handle.execute_update(
            "approve", _approval(again, "carol", "timing-switch"), result_type=ApprovalResult
        )
        assert (await handle.result()).outcome is Outcome.COMPLETED
    assert sorted(reset.applied) == ["t1", "t2"]


async def test_deadline_rejection_pages_when_the_policy_asks(
    env: WorkflowEnvironment, task_queue: str, audit: AuditActivities
) -> None:
    """With the bundle's page_on_reject, a change rejected at its deadline pages its team once."""
    req = _request()
    async with build_worker(
        env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=audit,
        bundle={"unmatched": "allow", "page_on_reject": True},  # a platform setting
    ):
        handle = await _start(env, req, task_queue)
        result = await handle.result()
        status = await handle.query("status", result_type=ChangeStatus)
    assert result.outcome is Outcome.REJECTED
    assert len(status.pages) == 1
    assert status.pages[0].startswith(f"log: {req.change_id} did not pass its gate in time")


async def test_unexpired_approval_carries_over_to_the_next_wave(
    env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, reset: Ledger
) -> None:
    """The same failure at the re-check before wave 2 is covered: no second wait for approval."""
    req = _request(use="timing-switch", waves=["1", "100%"], bake="1h")
    async with _worker(env, task_queue, audit):
        handle = await _start(env, req, task_queue)
        status = await until_phase(handle, Phase.AWAITING_APPROVAL)
        await handle.execute_update(
            "approve",
            _approval(status, "bob", "timing-switch", expires_in="4h"),
            result_type=ApprovalResult,
        )
        result = await handle.result()
        history = await handle.fetch_history()
    assert result.outcome is Outcome.COMPLETED
    phases = [
        e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields[
            "ChangePhase"
        ].data.decode()
        for e in history.events
        if e.HasField("upsert_workflow_search_attributes_event_attributes")
        and "ChangePhase"
        in e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
    ]
    assert phases.count('"AwaitingApproval"') == 1
    assert phases[-1] == '"Completed"'
