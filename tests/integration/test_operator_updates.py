"""Operator updates abort and rollback: validated by phase, audited, unwinding without cancellation."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities, SqliteAuditStore
from tests import fakes
from tests.fakes import Ledger, RecordingKind, Switch
from tests.helpers import until_phase
from worker.main import build_worker
from workflows.models import (
    AuditAction,
    AuditQuery,
    ChangeRequest,
    ChangeResult,
    OperatorAction,
    OperatorActionResult,
    Outcome,
    Phase,
)


@pytest.fixture(autouse=True)
def reset() -> Ledger:
    RecordingKind.ledger = Ledger()
    Switch.outcome = "pass"
    return RecordingKind.ledger


def _request(*, waves: list[str], bake: str) -> ChangeRequest:
    return ChangeRequest(
        change_id=f"op-{uuid.uuid4().hex[:8]}",
        kind="recording",
        summary="operator test",
        requester="alice",
        team="web",
        environment="prod",
        targets=[{"id": f"t{i}"} for i in range(1, 5)],  # type: ignore[misc]
        rollout={"waves": waves, "bake": bake, "max_parallel": 1},  # type: ignore[arg-type]
        policy={"guardrails": [{"use": "switch"}]},
    )


ACT = OperatorAction(operator="oscar", reason="error budget burning")


@pytest.mark.parametrize(
    ("update", "outcome", "action"),
    [
        ("abort", Outcome.ABORTED, AuditAction.ABORT),
        ("rollback", Outcome.ROLLED_BACK, AuditAction.ROLLBACK),
    ],
)
async def test_update_during_bake_reverts_in_reverse(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    audit: AuditActivities,
    store: SqliteAuditStore,
    reset: Ledger,
    update: str,
    outcome: Outcome,
    action: AuditAction,
) -> None:
    """abort/rollback while baking wave 1 reverts what was applied, in reverse; audited once."""
    req = _request(waves=["2", "100%"], bake="1h")
    async with build_worker(
        dev_env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=audit,
    ):
        handle = await dev_env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        await until_phase(handle, Phase.BAKING)
        answer = await handle.execute_update(update, ACT, result_type=OperatorActionResult)
        assert answer.accepted
        result = await handle.result()
        with pytest.raises(RPCError) as late:  # the server refuses updates to a closed change
            await handle.execute_update("abort", ACT, result_type=OperatorActionResult)
    assert result.outcome is outcome
    assert result.message == f"{action.value} by oscar: error budget burning"
    assert reset.applied == ["t1", "t2"]
    assert reset.reverted == ["t2", "t1"]
    assert late.value.status is RPCStatusCode.NOT_FOUND
    records = store.list(AuditQuery(change_id=req.change_id))
    [record] = [r for r in records if r.action is action]
    assert (record.actor, record.reason) == ("oscar", "error budget burning")
    assert [r.detail["target"] for r in records if r.action is AuditAction.COMPENSATION] == [
        "t2",
        "t1",
    ]


async def test_rollback_refused_before_any_mutation_abort_accepted(
    dev_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, reset: Ledger
) -> None:
    """Before anything is applied, rollback is refused (use abort) and abort ends the change."""
    Switch.outcome = "fail"
    req = _request(waves=["100%"], bake="0s")
    async with build_worker(
        dev_env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=audit,
    ):
        handle = await dev_env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        await until_phase(handle, Phase.AWAITING_APPROVAL, Phase.BLOCKED)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update("rollback", ACT, result_type=OperatorActionResult)
        assert (
            refused.value.cause.message
            == "nothing has been applied yet; use abort to stop this change"
        )
        await handle.execute_update("abort", ACT, result_type=OperatorActionResult)
        result = await handle.result()
    assert result.outcome is Outcome.ABORTED
    assert reset.applied == []
