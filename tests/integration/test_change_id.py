"""The change id is the workflow id, and it is used once, whoever starts the change (I9).

Starts go through a raw client with plain dicts and Temporal's default id-reuse policy, as any SDK
or ``temporal workflow start`` would send them; the worker replays every task.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, ResetReapplyType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities, SqliteAuditStore
from tests import fakes
from tests.fakes import Ledger, RecordingKind, Switch
from tests.helpers import until_phase
from tests.integration.test_hostile_input import request, task_failures
from worker.main import build_worker
from workflows import search_attributes as sa
from workflows.models import (
    AuditAction,
    AuditQuery,
    ChangeResult,
    ChangeStatus,
    LockHolder,
    Outcome,
    Phase,
    lock_id,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def operators() -> str:
    return "operators:\n  bob: [sre-leads]\n"


@pytest.fixture(autouse=True)
def reset() -> Ledger:
    RecordingKind.ledger = Ledger()
    Switch.outcome = "pass"
    return RecordingKind.ledger


async def start(
    client: Client, task_queue: str, wid: str, doc: dict[str, Any]
) -> WorkflowHandle[Any, ChangeResult]:
    """A raw start with Temporal's default id-reuse policy (a used id is allowed by the server)."""
    return await client.start_workflow(
        "GuardedChange", doc, id=wid, task_queue=task_queue, result_type=ChangeResult
    )


def actions(store: SqliteAuditStore, change_id: str) -> list[AuditAction]:
    return [r.action for r in store.list(AuditQuery(change_id=change_id))]


async def test_a_start_without_change_id_uses_the_workflow_id_everywhere(
    fake_worker: Client, task_queue: str, store: SqliteAuditStore
) -> None:
    """Without change_id: search attribute, gate child, result, ledger and status use the workflow id."""
    wid = f"raw-{uuid.uuid4().hex[:8]}"
    handle = await start(fake_worker, task_queue, wid, request())
    result = await handle.result()
    assert (result.outcome, result.change_id) == (Outcome.COMPLETED, wid)
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(sa.CHANGE_ID) == wid
    children = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            children.append(
                event.start_child_workflow_execution_initiated_event_attributes.workflow_id
            )
    assert children and all(c.startswith(f"{wid}/gate-") for c in children)
    status = await handle.query("status", result_type=ChangeStatus)  # after it finished
    assert (status.change_id, status.phase) == (wid, Phase.COMPLETED)
    records = store.list(AuditQuery(change_id=wid))
    assert records[0].action is AuditAction.STARTED
    assert records[-1].action is AuditAction.OUTCOME
    assert {r.change_id for r in records} == {wid}
    assert sorted(RecordingKind.ledger.applied) == ["t1", "t2"]
    assert all(k.startswith(f"{wid}:apply:") for k in RecordingKind.ledger.keys)
    assert await task_failures(handle) == []


@pytest.mark.parametrize("first_end", ["completed", "rolled_back", "terminated"])
async def test_a_used_change_id_is_refused_whoever_starts_it(
    fake_worker: Client, task_queue: str, store: SqliteAuditStore, first_end: str
) -> None:
    """A second run with a used id ends rejected before any check or mutation, and says why."""
    wid = f"reuse-{uuid.uuid4().hex[:8]}"
    if first_end == "completed":
        first = await start(fake_worker, task_queue, wid, request())
        assert (await first.result()).outcome is Outcome.COMPLETED
    elif first_end == "rolled_back":
        first = await start(fake_worker, task_queue, wid, request(params={"fail_apply": ["t2"]}))
        assert (await first.result()).outcome is Outcome.ROLLED_BACK
    else:
        Switch.outcome = "fail"
        first = await start(fake_worker, task_queue, wid, request())
        await until_phase(first, Phase.AWAITING_APPROVAL)
        await first.terminate("test")
    applied_before = list(RecordingKind.ledger.keys)
    gates_before = actions(store, wid).count(AuditAction.GATE)

    Switch.outcome = "pass"
    second = await start(fake_worker, task_queue, wid, request())
    result = await second.result()
    assert result.outcome is Outcome.REJECTED
    assert f"change id {wid} was used by run {first.result_run_id}" in result.message
    assert "choose a new id" in result.message
    assert RecordingKind.ledger.keys == applied_before  # nothing applied by the second run
    recorded = actions(store, wid)
    assert recorded.count(AuditAction.STARTED) == 1
    assert recorded.count(AuditAction.GATE) == gates_before  # no gate ran
    assert recorded[-2:] == [AuditAction.REFUSED, AuditAction.OUTCOME]
    assert await task_failures(second) == []


async def test_a_reset_run_continues_its_change_under_the_same_claim(
    fake_worker: Client, task_queue: str, store: SqliteAuditStore
) -> None:
    """Temporal reset replays into a new run of the same chain: it continues, it is not refused."""
    Switch.outcome = "fail"
    wid = f"reset-{uuid.uuid4().hex[:8]}"
    handle = await start(fake_worker, task_queue, wid, request())
    await until_phase(handle, Phase.AWAITING_APPROVAL)
    first_task = None
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            first_task = event.event_id
            break
    assert first_task is not None
    reset = await fake_worker.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=fake_worker.namespace,
            workflow_execution=WorkflowExecution(workflow_id=wid, run_id=handle.result_run_id),
            reason="test reset",
            workflow_task_finish_event_id=first_task,
            request_id=uuid.uuid4().hex,
            reset_reapply_type=ResetReapplyType.RESET_REAPPLY_TYPE_NONE,
        )
    )
    new = fake_worker.get_workflow_handle(wid, run_id=reset.run_id, result_type=ChangeResult)
    await until_phase(new, Phase.AWAITING_APPROVAL)
    Switch.outcome = "pass"
    await new.signal("recheck", {"requested_by": "bob"})
    result = await new.result()
    assert (result.outcome, result.change_id) == (Outcome.COMPLETED, wid)
    assert actions(store, wid).count(AuditAction.STARTED) == 1
    assert await task_failures(new) == []


async def test_a_raw_start_keeps_its_target_lock_through_a_long_bake(
    dev_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities
) -> None:
    """Without change_id, the lock's lease watch finds its holder (the workflow id) all bake long."""
    wid = f"lease-{uuid.uuid4().hex[:8]}"
    doc = request(
        rollout={"waves": ["100%"], "bake": "6s"},
        policy={"guardrails": [{"use": "target-lock", "params": {"watch_every": "1s"}}]},
    )
    async with build_worker(
        dev_env.client,
        task_queue=task_queue,
        kinds=fakes.kinds(),
        audit=audit,
        max_cached_workflows=0,
    ):
        handle = await start(dev_env.client, task_queue, wid, doc)
        await until_phase(handle, Phase.BAKING)
        lock = dev_env.client.get_workflow_handle(lock_id("t1"))
        for _ in range(4):  # four lease watches (every 1 s) while the change bakes
            holder = await lock.query("holder", result_type=LockHolder)
            assert holder.change_id == wid
            await asyncio.sleep(1.2)
        assert (await handle.query("status", result_type=ChangeStatus)).phase is Phase.BAKING
        result = await handle.result()
    assert result.outcome is Outcome.COMPLETED
    assert str(await lock.result()).startswith(f"released by {wid}")
