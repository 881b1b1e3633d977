"""An abort or rollback accepted as the last wave ends is honoured, and a later one refused.

Found by ``bench/concurrent_changes.py --changes 2 --targets 2``: a rollback sent once a target
was applied was accepted ("rollback requested; unwinding") and audited, but its handler was
still writing the audit record when the last wave finished; the change then completed with
nothing reverted. The audit store here holds the operator's record, so the race is a certainty.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities
from tests import fakes
from tests.builders import change_request, target_list
from tests.fakes import HoldingAuditStore, Ledger, RecordingKind
from tests.helpers import until_status
from worker.main import build_worker
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.models import (
    AuditAction,
    AuditQuery,
    ChangeRequest,
    OperatorAction,
    Outcome,
    Phase,
)


@pytest.fixture(autouse=True)
def ledger() -> Ledger:
    RecordingKind.ledger = Ledger()
    return RecordingKind.ledger


def _request() -> ChangeRequest:
    # t1 is applied at once; t2's mutation waits for the test (the last one of the rollout).
    return change_request(
        targets=target_list(2),
        params={"hold": "last", "hold_only": ["t2"]},
        rollout={"waves": ["100%"], "max_parallel": 1},
    )


def _worker(env: WorkflowEnvironment, task_queue: str, store: HoldingAuditStore) -> Any:
    return build_worker(
        env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=AuditActivities(store),
    )


OSCAR = OperatorAction(operator="oscar", reason="the error rate doubled")


@pytest.mark.parametrize("update", ["rollback", "abort"])
async def test_a_stop_still_auditing_when_the_last_wave_ends_unwinds_the_change(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger, update: str
) -> None:
    req = _request()
    cid = req.change_id or ""
    store = HoldingAuditStore()
    action = AuditAction.ROLLBACK if update == "rollback" else AuditAction.ABORT
    store.hold(cid, action)
    method = GuardedChangeWorkflow.rollback if update == "rollback" else GuardedChangeWorkflow.abort
    async with _worker(env, task_queue, store):
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, req, id=cid, task_queue=task_queue
        )
        await until_status(handle, lambda s: s.applied == ["t1"])
        stop = asyncio.create_task(handle.execute_update(method, OSCAR))
        await store.arrived(cid, action)  # accepted; its handler is writing the audit record
        ledger.gate("last").set()  # the last target is applied: the rollout is over
        await until_status(handle, lambda s: s.applied == ["t1", "t2"])
        store.let_in(cid, action)
        answer = await stop
        result = await handle.result()
    assert answer.message == f"{update} requested; unwinding"
    expected = Outcome.ROLLED_BACK if update == "rollback" else Outcome.ABORTED
    assert (result.outcome, result.message) == (
        expected,
        f"{update} by oscar: the error rate doubled",
    )
    assert sorted(result.reverted) == ["t1", "t2"]
    assert sorted(ledger.reverted) == ["t1", "t2"]


async def test_a_second_stop_after_the_rollout_is_refused_while_the_first_decides(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """Two operators: the rollback accepted first ends the change; the later abort is refused."""
    req = _request()
    cid = req.change_id or ""
    store = HoldingAuditStore()
    store.hold(cid, AuditAction.ROLLBACK)
    async with _worker(env, task_queue, store):
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, req, id=cid, task_queue=task_queue
        )
        await until_status(handle, lambda s: s.applied == ["t1"])
        stop = asyncio.create_task(handle.execute_update(GuardedChangeWorkflow.rollback, OSCAR))
        await store.arrived(cid, AuditAction.ROLLBACK)
        ledger.gate("last").set()
        settling = await until_status(handle, lambda s: s.message.startswith("the rollout is over"))
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                GuardedChangeWorkflow.abort, OperatorAction(operator="bob", reason="me too")
            )
        store.let_in(cid, AuditAction.ROLLBACK)
        await stop
        result = await handle.result()
    assert settling.message == (
        "the rollout is over (applied to 2 target(s)); an operator's action accepted before it "
        "ended is being recorded, and decides how the change ends"
    )
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.message == (
        "the change has finished its rollout (applied to 2 target(s)) and is recording its "
        "outcome; there is nothing to abort: to undo it, start a new change"
    )
    assert (result.outcome, sorted(result.reverted)) == (Outcome.ROLLED_BACK, ["t1", "t2"])
    recorded = [r.action for r in store.list(AuditQuery(change_id=cid))]
    assert (recorded.count(AuditAction.ROLLBACK), recorded.count(AuditAction.ABORT)) == (1, 0)


async def test_an_abort_still_auditing_when_the_gate_gives_up_ends_the_change_aborted(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """An abort accepted while the deadline is recorded ends the change ``aborted``, not rejected.

    The change is blocked by a check that never passes; its deadline passes while its `deadline`
    record is held, an abort is accepted then (its own record held too), and the gate loop gives
    up. Without the fix the change ended ``rejected`` with the abort's caller told "unwinding".
    A second abort while the first decides is refused, saying why.
    """
    fakes.Switch.outcome = "fail"
    # A deadline a few real seconds away: skipping time would wait for the held record's activity.
    req = change_request(
        targets=target_list(2),
        policy={"guardrails": [{"use": "switch", "opt_out": "forbidden"}]},
        deadline=await env.get_current_time() + timedelta(seconds=3),
    )
    cid = req.change_id or ""
    store = HoldingAuditStore()
    store.hold(cid, AuditAction.DEADLINE)
    store.hold(cid, AuditAction.ABORT)
    async with _worker(env, task_queue, store):
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, req, id=cid, task_queue=task_queue
        )
        await until_status(handle, lambda s: s.phase is Phase.BLOCKED)
        await store.arrived(cid, AuditAction.DEADLINE)  # the deadline passed; being recorded
        stop = asyncio.create_task(handle.execute_update(GuardedChangeWorkflow.abort, OSCAR))
        await store.arrived(cid, AuditAction.ABORT)  # accepted; its handler is auditing
        store.let_in(cid, AuditAction.DEADLINE)  # the gate loop gives up
        settling = await until_status(handle, lambda s: "is being recorded" in s.message)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                GuardedChangeWorkflow.abort, OperatorAction(operator="bob", reason="me too")
            )
        store.let_in(cid, AuditAction.ABORT)
        answer = await stop
        result = await handle.result()
    assert settling.message.startswith("the gate did not pass in time (the gate did not pass")
    cause = refused.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.message == (
        "the change did not pass its gate before its deadline and is ending rejected; there is "
        "nothing to abort: nothing was applied"
    )
    assert answer.message == "abort requested; unwinding"
    assert (result.outcome, result.message) == (
        Outcome.ABORTED,
        "abort by oscar: the error rate doubled",
    )
    assert (result.applied, ledger.applied) == ([], [])
    recorded = [r.action for r in store.list(AuditQuery(change_id=cid))]
    assert (recorded.count(AuditAction.ABORT), recorded.count(AuditAction.DEADLINE)) == (1, 1)
