"""Task priority: compensations (1) and gates (2) ahead of mutations (4); fairness by team."""

from __future__ import annotations

from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

import changeguard
from cli.main import start_change
from tests import fakes
from tests.builders import change_request, new_change_id
from tests.fakes import Ledger, RecordingKind
from worker.main import build_worker
from worker.settings import Settings
from workflows.models import ChangeResult, Outcome
from workflows.priorities import change_priority


async def _keys_by_activity(env: WorkflowEnvironment, workflow_id: str) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    history = await env.client.get_workflow_handle(workflow_id).fetch_history()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            found.setdefault(attrs.activity_type.name, set()).add(attrs.priority.priority_key)
        if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            child = event.child_workflow_execution_started_event_attributes.workflow_execution
            for name, keys in (await _keys_by_activity(env, child.workflow_id)).items():
                found.setdefault(name, set()).update(keys)
    return found


async def test_a_rolled_back_change_schedules_reverts_first_then_checks_then_mutations(
    dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    RecordingKind.ledger = Ledger()
    req = change_request(
        change_id=new_change_id("prio"),
        summary="priorities",
        targets=[{"id": "a"}, {"id": "b"}],
        params={"fail_apply": ["b"]},
        rollout={"waves": ["100%"], "max_parallel": 1},
        policy={"guardrails": [{"use": "always-pass"}]},
    )
    async with build_worker(
        dev_env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        client = changeguard.Client(dev_env.client, Settings.from_env(task_queue=task_queue))
        await start_change(client, req, quiet=True)  # the real start path: cli, then changeguard
        handle = dev_env.client.get_workflow_handle(req.change_id or "", result_type=ChangeResult)
        result = await handle.result()
    assert result.outcome is Outcome.ROLLED_BACK, result.message
    keys = await _keys_by_activity(dev_env, handle.id)
    assert keys["revert_change"] == {1}
    assert keys["run_check"] == {2} and keys["resolve_policy"] == {2}
    assert keys["apply_change"] == {4}
    started = (await handle.fetch_history()).events[0].workflow_execution_started_event_attributes
    assert started.priority.fairness_key == "payments"


def test_a_fairness_key_fits_temporals_limit() -> None:
    assert change_priority("t" * 100).fairness_key is not None
    assert len((change_priority("é" * 100).fairness_key or "").encode()) <= 64
    assert change_priority("").fairness_key == "unowned"
