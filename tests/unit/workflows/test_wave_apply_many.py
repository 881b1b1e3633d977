"""A small wave of an opted-in kind applies in ``apply_change_many`` chunks, each target its own step.

Before ``WAVE_APPLY_MANY_PATCH`` only ``TargetBatch`` children (waves over ``BATCH_SIZE``) used
chunks; a 20-target change five at a time made 20 mutation activities, the bare-SDK baseline's
count, on top of its gate and bookkeeping (``bench/concurrent_changes.py``). Here every target
still has its own idempotency key, result and compensation: a failure or an operator's stop undoes
exactly the targets a chunk reached, and the targets it never reached are left alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests import fakes
from tests.builders import change_request, target_list
from tests.fakes import Ledger, RecordingKind
from worker.main import build_worker
from workflows import names
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.models import ChangeRequest, OperatorAction, Outcome, idempotency_key
from workflows.wave_apply import WAVE_APPLY_MANY_PATCH


@pytest.fixture(autouse=True)
def ledger() -> Ledger:
    RecordingKind.ledger = Ledger()
    return RecordingKind.ledger


def _request(targets: int, max_parallel: int, params: dict[str, Any]) -> ChangeRequest:
    return change_request(
        kind="recording-many",  # apply_many_size 10 (tests/fakes.py)
        targets=target_list(targets),
        params=params,
        rollout={"waves": ["100%"], "max_parallel": max_parallel},
    )


def _worker(env: WorkflowEnvironment, task_queue: str) -> Any:
    """A worker with the recording kinds, ``recording-many`` among them."""
    return build_worker(
        env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(many=True),
    )


async def _finished(
    env: WorkflowEnvironment, task_queue: str, req: ChangeRequest
) -> tuple[Any, WorkflowHandle[Any, Any]]:
    """Run ``req`` to its end; its result and handle."""
    async with _worker(env, task_queue):
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, req, id=req.change_id or "", task_queue=task_queue
        )
        return await handle.result(), handle


async def _activities(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The activity types the change scheduled, in order."""
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


async def _markers(handle: WorkflowHandle[Any, Any]) -> list[str]:
    found = []
    for e in (await handle.fetch_history()).events:
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            found.append(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)
    return [d.decode() for d in found]


async def test_a_small_wave_applies_in_chunks_with_a_key_per_target(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    req = _request(20, 5, {})
    result, handle = await _finished(env, task_queue, req)
    scheduled = await _activities(handle)
    markers = await _markers(handle)
    assert result.outcome is Outcome.COMPLETED, result.message
    assert sorted(result.applied) == sorted(f"t{i}" for i in range(1, 21))
    assert sorted(ledger.keys) == sorted(
        idempotency_key(result.change_id, "apply", t) for t in result.applied
    )
    # Five chunks of four (one per unit of max_parallel), no one-target mutation.
    assert scheduled.count(names.APPLY_CHANGE_MANY) == 5
    assert names.APPLY_CHANGE not in scheduled
    assert any(WAVE_APPLY_MANY_PATCH in m for m in markers)


async def test_a_failed_chunk_undoes_what_every_chunk_reached_and_nothing_more(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    # Chunks t1-t4, t5-t8, ... all five at once; t6 is refused, so t7 and t8 are never attempted.
    req = _request(20, 5, {"fail_apply": ["t6"]})
    result, _ = await _finished(env, task_queue, req)
    assert result.outcome is Outcome.ROLLED_BACK, result.message
    assert "t6 refused" in result.message
    reached = [f"t{i}" for i in range(1, 21) if i not in (6, 7, 8)]
    assert sorted(ledger.applied) == sorted(reached)
    assert sorted(ledger.reverted) == sorted(reached)
    # Each target its own compensation: the refused one too (revert_if_applied), not t7 or t8.
    assert sorted(ledger.revert_calls) == sorted([*reached, "t6"])
    assert sorted(result.reverted) == sorted(reached)


async def test_a_rollback_cancels_chunks_in_flight_and_reverts_what_they_reached(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    # Two chunks, t1-t2 and t3-t4: t1 and t3 apply, then t2 and t4 hang until the gate opens.
    req = _request(4, 2, {"hold": "stuck", "hold_only": ["t2", "t4"]})
    async with _worker(env, task_queue):
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, req, id=req.change_id or "", task_queue=task_queue
        )
        for _ in range(400):  # the chunks report only when they end: watch the kind instead
            if sorted(ledger.applied) == ["t1", "t3"]:
                break
            await asyncio.sleep(0.05)
        assert sorted(ledger.applied) == ["t1", "t3"]
        try:  # accepted though no chunk has reported a target yet: the wave is applying
            answer = await handle.execute_update(
                GuardedChangeWorkflow.rollback, OperatorAction(operator="oscar", reason="bad")
            )
            result = await asyncio.wait_for(handle.result(), timeout=30)
        finally:
            ledger.gate("stuck").set()
    assert answer.message == "rollback requested; unwinding"
    assert result.outcome is Outcome.ROLLED_BACK, result.message
    assert sorted(ledger.applied) == ["t1", "t3"]  # t2 and t4 were cancelled before they applied
    # Neither chunk reported, so each of their targets is reverted if applied, last first.
    assert ledger.revert_calls == ["t4", "t3", "t2", "t1"]
    assert sorted(ledger.reverted) == ["t1", "t3"]
    # What a revert found applied is reported applied too: the result never hides an effect.
    assert sorted(result.applied) == ["t1", "t3"] and sorted(result.reverted) == ["t1", "t3"]
