"""An ending change signals lock workflows only when a gate of it may have touched one.

``bench/rollout.py`` found every ending change signalling ``release`` to one lock workflow per
target, whatever its policy: 10,000 RPCs (each answered "not found") at the end of a 10,000-target
change that never locked anything.
"""

from __future__ import annotations

from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from guardrails.builtin.target_lock import TargetLock
from tests import fakes
from tests.builders import change_request, target_list
from worker.main import build_worker
from workflows import names
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.models import ChangeRequest, Outcome


async def _activities(handle: WorkflowHandle[Any, Any]) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


async def _run(env: WorkflowEnvironment, task_queue: str, req: ChangeRequest) -> list[str]:
    registry = fakes.guardrails()
    registry.register(TargetLock)
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=registry, kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, req, id=req.change_id or "", task_queue=task_queue
        )
        assert (await handle.result()).outcome is Outcome.COMPLETED
        return await _activities(handle)


async def test_a_change_no_lock_check_gated_ends_without_signalling_locks(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    seen = await _run(env, task_queue, change_request(targets=target_list(3)))
    assert seen.count(names.APPLY_CHANGE) == 3
    assert names.RELEASE_TARGET_LOCKS not in seen


async def test_a_change_gated_by_target_lock_still_gives_its_locks_back(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    req = change_request(targets=target_list(3), policy={"guardrails": [{"use": "target-lock"}]})
    seen = await _run(env, task_queue, req)
    assert names.RELEASE_TARGET_LOCKS in seen
