"""An operator's stop cancels the change's mutations in flight instead of waiting for them.

``bench/concurrent_changes.py`` measured 22 s (p95) from a rollback to its first compensation: the
change's scheduled mutations had to run and end first, behind 100 other changes' forward work.
Here the mutations in flight never end by themselves (they wait for the test), so an abort that
waits for them would never finish.
"""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from changeguard.client import OperatorUpdate
from tests import fakes
from tests.builders import change_request, target_list
from tests.fakes import Ledger, RecordingKind
from tests.helpers import until_status
from worker.main import build_worker
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.models import ChangeResult, OperatorAction, OperatorActionResult, Outcome, Phase
from workflows.wave_apply import BATCH_SIZE


@pytest.fixture(autouse=True)
def ledger() -> Ledger:
    RecordingKind.ledger = Ledger()
    return RecordingKind.ledger


async def stop_and_end(
    handle: WorkflowHandle[GuardedChangeWorkflow, ChangeResult],
    stop: OperatorUpdate,
    ledger: Ledger,
    *,
    within: float,
    reason: str = "stop",
) -> tuple[OperatorActionResult, ChangeResult]:
    """Send ``stop`` (abort or rollback) and wait ``within`` seconds for the change's end.

    The hanging mutations' gate opens afterwards whatever happened, so no activity outlives the test.
    """
    try:
        answer = await handle.execute_update(stop, OperatorAction(operator="oscar", reason=reason))
        return answer, await asyncio.wait_for(handle.result(), timeout=within)
    finally:
        ledger.gate("stuck").set()


async def test_an_abort_cancels_the_mutations_in_flight_and_unwinds_at_once(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    # t1 applies at once; t2 and t3 then start and hang until the gate opens (never, here).
    req = change_request(
        targets=target_list(4),
        params={"hold": "stuck", "hold_only": ["t2", "t3"]},
        rollout={"waves": ["100%"], "max_parallel": 2},
    )
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, req, id=req.change_id or "", task_queue=task_queue
        )
        await until_status(handle, lambda s: s.applied == ["t1"] and s.phase is Phase.EXECUTING)
        answer, result = await stop_and_end(
            handle, GuardedChangeWorkflow.rollback, ledger, within=30, reason="bad"
        )
    assert answer.message == "rollback requested; unwinding"
    assert (result.outcome, result.applied, result.reverted) == (
        Outcome.ROLLED_BACK,
        ["t1"],
        ["t1"],
    )
    assert ledger.applied == ["t1"]  # t2 and t3 were cancelled, t4 never started
    assert sorted(ledger.revert_calls) == ["t1", "t2", "t3"]  # revert_if_applied: t2, t3 no-ops


@pytest.mark.parametrize("kind", ["recording", "recording-many"])
async def test_an_abort_cancels_a_large_waves_batches_in_flight(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger, kind: str
) -> None:
    # Wave 2 (240 targets) runs as three TargetBatch children in lanes of widths 2, 1 and 1. The
    # first target of each batch applies; every other one hangs until the gate opens (never,
    # here). Before batches honoured a stop, the abort waited for every batch to end: forever.
    ids = [f"h{i:03d}" for i in range(250)]
    first_of_batches = [ids[10], ids[10 + BATCH_SIZE], ids[10 + 2 * BATCH_SIZE]]
    req = change_request(
        kind=kind,
        targets=[{"id": t} for t in ids],
        params={"hold": "stuck", "hold_except": ids[:10] + first_of_batches},
        rollout={"waves": ["10", "100%"], "max_parallel": 4},
    )
    async with build_worker(
        env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(many=True),
    ):
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, req, id=req.change_id or "", task_queue=task_queue
        )
        for _ in range(600):
            if set(first_of_batches) <= set(ledger.applied):
                break
            await asyncio.sleep(0.05)
        assert set(first_of_batches) <= set(ledger.applied), ledger.applied
        answer, result = await stop_and_end(handle, GuardedChangeWorkflow.abort, ledger, within=60)
    applied = ids[:10] + first_of_batches
    assert answer.accepted
    assert result.outcome is Outcome.ABORTED, result
    assert sorted(ledger.applied) == sorted(applied)  # nothing landed after the abort
    # Each stopped batch says what it applied: one target per mutation, each; several per
    # activity (apply_many), only whole chunks, and each first target shares its chunk with
    # targets that hang, so that chunk was cancelled mid-way (its revert batch still undid it).
    reported = applied if kind == "recording" else ids[:10]
    assert sorted(result.applied) == sorted(reported)
    assert sorted(result.reverted) == sorted(applied)  # and everything that landed is undone
    assert sorted(ledger.reverted) == sorted(applied)
