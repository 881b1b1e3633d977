"""Large waves run in TargetBatch children: same saga semantics, small histories."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from tests import fakes
from tests.builders import change_request, new_change_id
from tests.fakes import Ledger, RecordingKind
from tests.helpers import until_phase
from worker.main import build_worker
from workflows.models import ChangeRequest, ChangeResult, ChangeStatus, Outcome, Phase
from workflows.wave_apply import BATCH_SIZE

N = 250
IDS = [f"h{i:03d}" for i in range(N)]


@pytest.fixture(autouse=True)
def ledger() -> Ledger:
    RecordingKind.ledger = Ledger()
    return RecordingKind.ledger


def _request(params: dict[str, Any]) -> ChangeRequest:
    return change_request(
        change_id=new_change_id("big"),
        summary="many targets",
        team="web",
        targets=[{"id": t} for t in IDS],
        params=params,
        rollout={"waves": ["10", "100%"], "max_parallel": 20},
        policy={"guardrails": [{"use": "always-pass"}]},
    )


async def _run(
    env: WorkflowEnvironment, task_queue: str, req: ChangeRequest
) -> tuple[ChangeResult, int]:
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        result = await handle.result()
        events = len((await handle.fetch_history()).events)
    return result, events


async def test_large_wave_completes_in_batches_with_a_small_history(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """240 targets beyond the first wave run as batches; the parent history stays small."""
    assert N - 10 > BATCH_SIZE
    result, events = await _run(env, task_queue, _request({}))
    assert result.outcome is Outcome.COMPLETED
    assert sorted(ledger.applied) == IDS
    assert len(ledger.applied) == N  # each exactly once
    assert sorted(result.applied) == IDS
    assert events < 200, events


async def test_failure_in_a_batch_reverts_every_applied_target_in_reverse(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """A target failing in the third batch: everything applied is reverted, later batches first."""
    failing = IDS[10 + 2 * BATCH_SIZE + 5]
    result, _ = await _run(env, task_queue, _request({"fail_apply": [failing]}))
    assert result.outcome is Outcome.ROLLED_BACK
    assert failing not in ledger.applied
    assert sorted(ledger.reverted) == sorted(ledger.applied)
    assert sorted(result.reverted) == sorted(ledger.applied)
    position = {t: i for i, t in enumerate(ledger.reverted)}
    batch2 = [t for t in IDS[10 + BATCH_SIZE : 10 + 2 * BATCH_SIZE] if t in position]
    batch1 = [t for t in IDS[10 : 10 + BATCH_SIZE] if t in position]
    first_wave = IDS[:10]
    assert max(position[t] for t in batch2) < min(position[t] for t in batch1)
    assert max(position[t] for t in batch1) < min(position[t] for t in first_wave)


async def _paused_then(
    env: WorkflowEnvironment, task_queue: str, req: ChangeRequest, update: str
) -> tuple[ChangeStatus, ChangeResult]:
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        paused = await until_phase(handle, Phase.PAUSED)
        await handle.execute_update(update, {"operator": "oscar", "reason": "decided"})
        return paused, await handle.result()


async def test_an_irreversible_step_in_a_batch_is_the_point_of_no_return(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """Batch 1 ran an irreversible step, batch 2 fails: pause and page, abort undoes nothing."""
    irreversible, failing = IDS[10 + 7], IDS[10 + BATCH_SIZE + 3]
    req = _request({"irreversible": [irreversible], "fail_apply": [failing]})
    paused, result = await _paused_then(env, task_queue, req, "abort")
    assert f"{irreversible} (drop-column)" in paused.message
    assert [p for p in paused.pages if "point of no return" in p]
    assert (result.outcome, ledger.revert_calls) == (Outcome.FAILED, [])
    assert result.needs_repair[0] == f"{irreversible} (drop-column)"
    assert set(result.needs_repair[1:]) == set(ledger.applied) - {irreversible}


async def test_a_batch_that_fails_after_its_own_irreversible_step_reports_it(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """Irreversible step and failure in the same batch: the failed batch still reports both."""
    batch = IDS[10 + BATCH_SIZE : 10 + 2 * BATCH_SIZE]
    irreversible, failing = batch[0], batch[-1]
    req = _request({"irreversible": [irreversible], "fail_apply": [failing]})
    req.rollout.max_parallel = 1  # the batch applies in order: the irreversible target first
    paused, result = await _paused_then(env, task_queue, req, "abort")
    assert f"{irreversible} (drop-column)" in paused.message
    assert (result.outcome, ledger.revert_calls) == (Outcome.FAILED, [])
    assert result.needs_repair[0] == f"{irreversible} (drop-column)"
    assert set(result.needs_repair[1:]) == set(ledger.applied) - {irreversible}
    assert set(batch[:-1]) <= set(result.needs_repair[1:]) | {irreversible}


async def test_resume_past_a_batchs_point_of_no_return_rolls_forward(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """Resume after such a stop reruns the batches: each target applied once, nothing reverted."""
    irreversible, flaky = IDS[10 + 7], IDS[10 + BATCH_SIZE + 3]
    req = _request({"irreversible": [irreversible], "flaky": [flaky]})
    _, result = await _paused_then(env, task_queue, req, "resume")
    assert result.outcome is Outcome.COMPLETED, result.message
    assert (sorted(ledger.applied), ledger.revert_calls) == (IDS, [])
    assert sorted(result.applied) == IDS
