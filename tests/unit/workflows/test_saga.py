"""GuardedChange as a saga: reverse-order compensation on failure, cancel, and failing reverts."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

from tests import fakes
from tests.builders import change_request
from tests.fakes import Ledger, RecordingKind
from tests.helpers import until_phase
from worker.main import build_worker
from workflows.models import ChangeRequest, ChangeResult, ChangeStatus, Outcome, Phase

TARGETS = ["t1", "t2", "t3", "t4", "t5"]


@pytest.fixture(autouse=True)
def fresh_ledger() -> Ledger:
    RecordingKind.ledger = Ledger()
    return RecordingKind.ledger


def _request(
    params: dict[str, Any], *, waves: list[str] | None = None, bake: str = "0s"
) -> ChangeRequest:
    return change_request(
        summary="saga test",
        targets=[{"id": t} for t in TARGETS],
        params=params,
        rollout={"waves": waves or ["100%"], "max_parallel": 1, "bake": bake},
        policy={"guardrails": [{"use": "always-pass"}]},
    )


def _worker(env: WorkflowEnvironment, task_queue: str):  # type: ignore[no-untyped-def]
    return build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    )


async def _start(
    env: WorkflowEnvironment, task_queue: str, req: ChangeRequest
) -> WorkflowHandle[Any, ChangeResult]:
    return await env.client.start_workflow(
        "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
    )


async def test_completes_and_applies_each_target_once(
    env: WorkflowEnvironment, task_queue: str, fresh_ledger: Ledger
) -> None:
    """A clean change applies every target once, in wave order, and completes."""
    async with _worker(env, task_queue):
        result = await (
            await _start(env, task_queue, _request({}, waves=["1", "40%", "100%"]))
        ).result()
    assert result.outcome is Outcome.COMPLETED
    assert fresh_ledger.applied == TARGETS
    assert result.applied == TARGETS
    assert fresh_ledger.revert_calls == []


async def test_failure_at_k_reverts_in_reverse(
    env: WorkflowEnvironment, task_queue: str, fresh_ledger: Ledger
) -> None:
    """A failure at target 4 compensates 4 (a no-op), 3, 2, 1, in that order."""
    async with _worker(env, task_queue):
        result = await (await _start(env, task_queue, _request({"fail_apply": ["t4"]}))).result()
    assert result.outcome is Outcome.ROLLED_BACK
    assert fresh_ledger.applied == ["t1", "t2", "t3"]
    assert fresh_ledger.revert_calls == ["t4", "t3", "t2", "t1"]
    assert fresh_ledger.reverted == ["t3", "t2", "t1"]
    assert result.compensation_failures == []
    assert "t4 refused" in result.message


async def test_failing_revert_does_not_stop_the_others(
    env: WorkflowEnvironment, task_queue: str, fresh_ledger: Ledger
) -> None:
    """A revert that fails is reported, outcome failed, and the remaining reverts still run."""
    async with _worker(env, task_queue):
        req = _request({"fail_apply": ["t4"], "fail_revert": ["t2"]})
        result = await (await _start(env, task_queue, req)).result()
    assert result.outcome is Outcome.FAILED
    assert fresh_ledger.revert_calls == ["t4", "t3", "t2", "t1"]
    assert fresh_ledger.reverted == ["t3", "t1"]
    assert [(f.step, f.error_type) for f in result.compensation_failures] == [
        ("t2", "TargetRejected")
    ]


async def test_cancel_while_baking_reverts(
    env: WorkflowEnvironment, task_queue: str, fresh_ledger: Ledger
) -> None:
    """Cancelling during the bake after wave 1 reverts what was applied, then ends cancelled."""
    async with _worker(env, task_queue):
        handle = await _start(env, task_queue, _request({}, waves=["2", "100%"], bake="1h"))
        for _ in range(200):
            status = await handle.query("status", result_type=ChangeStatus)
            if status.phase is Phase.BAKING:
                break
            await asyncio.sleep(0.05)
        assert status.phase is Phase.BAKING
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as info:
            await handle.result()
        final = await handle.query("status", result_type=ChangeStatus)
    assert isinstance(info.value.cause, CancelledError)
    assert fresh_ledger.applied == ["t1", "t2"]
    assert fresh_ledger.reverted == ["t2", "t1"]
    assert (final.phase, final.outcome) == (Phase.ABORTED, Outcome.ABORTED)


async def test_undecodable_input_is_rejected_with_every_field(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """A raw start whose payload is not a ChangeRequest ends rejected at once, naming each field."""
    async with _worker(env, task_queue):
        handle = await env.client.start_workflow(
            "GuardedChange",
            {"kind": "recording"},
            id=f"raw-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            result_type=ChangeResult,
        )
        result = await asyncio.wait_for(handle.result(), timeout=30)
    assert result.outcome is Outcome.REJECTED
    for field in ("summary", "requester", "team", "environment", "targets"):
        assert f"{field}: Field required" in result.message


async def test_failed_compensation_pages_and_names_the_targets_to_repair(
    env: WorkflowEnvironment, task_queue: str, fresh_ledger: Ledger
) -> None:
    """Outcome failed pages the team and says which targets need a human."""
    async with _worker(env, task_queue):
        req = _request({"fail_apply": ["t4"], "fail_revert": ["t2"]})
        handle = await _start(env, task_queue, req)
        result = await handle.result()
        status = await handle.query("status", result_type=ChangeStatus)
    assert result.outcome is Outcome.FAILED
    assert result.needs_repair == ["t2"] == status.needs_repair
    assert "needs a human: t2" in result.message
    assert [p for p in status.pages if "FAILED" in p and "t2" in p]


async def test_unknown_kind_is_rejected_before_the_gate(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """A change whose kind no worker knows ends rejected with the known kinds named; no gate runs."""
    req = _request({}).model_copy(update={"kind": "teleport"})
    async with _worker(env, task_queue):
        result = await (await _start(env, task_queue, req)).result()
        status = await env.client.get_workflow_handle(req.change_id).query(
            "status", result_type=ChangeStatus
        )
    assert result.outcome is Outcome.REJECTED
    assert "no change kind named 'teleport' (known: recording)" in result.message
    assert status.gate_runs == 0


async def test_a_failure_past_the_point_of_no_return_pauses_and_abort_ends_failed(
    env: WorkflowEnvironment, task_queue: str, fresh_ledger: Ledger
) -> None:
    """After an irreversible step, a failure pages and pauses; abort ends failed, undoing nothing."""
    req = _request({"irreversible": ["t1"], "fail_apply": ["t3"]}, waves=["1", "100%"])
    async with _worker(env, task_queue):
        handle = await _start(env, task_queue, req)
        paused = await until_phase(handle, Phase.PAUSED)
        assert (
            "past the point of no return" in paused.message and "t1 (drop-column)" in paused.message
        )
        assert [p for p in paused.pages if "point of no return" in p]
        await handle.execute_update("abort", {"operator": "oscar", "reason": "repair by hand"})
        result = await handle.result()
    assert result.outcome is Outcome.FAILED
    assert fresh_ledger.revert_calls == []  # nothing pretends to undo an irreversible step
    assert result.needs_repair[0] == "t1 (drop-column)"
    assert set(result.needs_repair[1:]) == set(result.applied) - {"t1"}
    assert "nothing was undone" in result.message


async def test_resume_past_the_point_of_no_return_rolls_forward(
    env: WorkflowEnvironment, task_queue: str, fresh_ledger: Ledger
) -> None:
    """Resume after such a stop rolls forward: the failed target is retried, the rest applied."""
    req = _request({"irreversible": ["t1"], "flaky": ["t3"]}, waves=["1", "100%"])
    async with _worker(env, task_queue):
        handle = await _start(env, task_queue, req)
        await until_phase(handle, Phase.PAUSED)
        await handle.execute_update("resume", {"operator": "oscar", "reason": "t3 fixed"})
        result = await handle.result()
    assert result.outcome is Outcome.COMPLETED
    assert sorted(fresh_ledger.applied) == TARGETS  # each applied once (keys replay)
    assert fresh_ledger.revert_calls == []
    assert sorted(result.applied) == TARGETS


async def test_a_failure_before_any_irreversible_step_still_unwinds(
    env: WorkflowEnvironment, task_queue: str, fresh_ledger: Ledger
) -> None:
    """A failure before the irreversible step ran unwinds the reversible steps in reverse."""
    req = _request({"irreversible": ["t5"], "fail_apply": ["t3"]})
    async with _worker(env, task_queue):
        result = await (await _start(env, task_queue, req)).result()
    assert result.outcome is Outcome.ROLLED_BACK
    assert fresh_ledger.reverted == ["t2", "t1"]


async def test_an_operator_rollback_past_the_point_of_no_return_ends_failed_at_once(
    env: WorkflowEnvironment, task_queue: str, fresh_ledger: Ledger
) -> None:
    """A rollback update after an irreversible step is the decision: failed, nothing undone."""
    req = _request({"irreversible": ["t1"]}, waves=["1", "100%"], bake="1h")
    async with _worker(env, task_queue):
        handle = await _start(env, task_queue, req)
        await until_phase(handle, Phase.BAKING)
        await handle.execute_update("rollback", {"operator": "oscar", "reason": "bad data"})
        result = await handle.result()
    assert result.outcome is Outcome.FAILED
    assert fresh_ledger.revert_calls == []
    assert result.needs_repair == ["t1 (drop-column)"]
    assert result.message.startswith("rollback by oscar: bad data; nothing was undone")
