"""A large wave's batches run in lanes under one max_parallel budget (workflows/wave_window.py)."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.kinds.base import ChangeKind, new_registry
from guardrails.plugins import PluginRegistry
from tests import fakes
from tests.builders import change_request, new_change_id, target_list
from tests.fakes import Ledger, RecordingKind, RecordingParams
from worker.main import build_worker
from workflows.models import ApplyResult, ChangeResult, Outcome, Target
from workflows.wave_window import lane_widths, run_in_lanes


@pytest.mark.parametrize(
    ("batches", "budget", "widths"),
    [
        (1, 50, [50]),
        (3, 50, [17, 17, 16]),
        (3, 20, [7, 7, 6]),
        (100, 50, [1] * 50),
        (50, 50, [1] * 50),
        (2, 1, [1]),
    ],
)
def test_lanes_share_the_budget_exactly(batches: int, budget: int, widths: list[int]) -> None:
    assert lane_widths(batches, budget) == widths
    assert sum(lane_widths(batches, budget)) == budget


async def test_a_lane_takes_the_next_batch_as_soon_as_its_own_ends() -> None:
    """Batch 'fast' ends first: its lane starts batch 'next' while 'slow' still runs."""
    started: list[str] = []
    running: set[str] = set()
    overlap: list[set[str]] = []

    async def run(batch: tuple[str, float], width: int) -> None:
        name, seconds = batch
        started.append(name)
        running.add(name)
        overlap.append(set(running))
        await asyncio.sleep(seconds)
        running.discard(name)

    await run_in_lanes([("slow", 0.3), ("fast", 0.01), ("next", 0.01)], 2, run)
    assert started == ["slow", "fast", "next"]
    assert {"slow", "next"} in overlap  # no drain at fast's boundary


async def test_after_a_failure_no_lane_starts_a_batch_and_in_flight_ones_end() -> None:
    finished: list[int] = []

    async def run(batch: int, width: int) -> None:
        if batch == 1:
            raise RuntimeError("batch 1 failed")
        await asyncio.sleep(0.05)
        finished.append(batch)

    with pytest.raises(RuntimeError, match="batch 1 failed"):
        await run_in_lanes(list(range(10)), 2, run)
    assert finished == [0]  # batch 0 was in flight and ended; nothing after batch 1 started


class CountingKind(RecordingKind):
    """The recording kind, registered under its name, that also tracks mutations in flight."""

    in_flight: ClassVar[set[str]] = set()
    peak: ClassVar[int] = 0
    batches_at_once: ClassVar[int] = 0

    async def apply(
        self, params: RecordingParams, target: Target, *, idempotency_key: str
    ) -> ApplyResult:
        cls = CountingKind
        cls.in_flight.add(target.id)
        cls.peak = max(cls.peak, len(cls.in_flight))
        batches = {(int(t[1:]) - 1) // 100 for t in cls.in_flight}
        cls.batches_at_once = max(cls.batches_at_once, len(batches))
        try:
            return await super().apply(params, target, idempotency_key=idempotency_key)
        finally:
            cls.in_flight.discard(target.id)


def _kinds() -> PluginRegistry[ChangeKind[Any]]:
    registry = new_registry()
    registry.register(CountingKind)
    return registry


async def test_a_wave_of_three_batches_runs_them_at_once_within_max_parallel(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """250 targets, max_parallel 20: batches overlap, never more than 20 mutations at once."""
    RecordingKind.ledger = Ledger()
    CountingKind.in_flight, CountingKind.peak, CountingKind.batches_at_once = set(), 0, 0
    req = change_request(
        change_id=new_change_id("lanes"),
        summary="many targets",
        team="web",
        targets=target_list(250, "h{:03d}"),
        params={"delay": 0.05},
        rollout={"waves": ["100%"], "max_parallel": 20},
        policy={"guardrails": [{"use": "always-pass"}]},
    )
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=_kinds()
    ):
        result = await env.client.execute_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
    assert result.outcome is Outcome.COMPLETED, result.message
    assert sorted(result.applied) == sorted(t.id for t in req.targets)
    assert sorted(RecordingKind.ledger.applied) == sorted(t.id for t in req.targets)
    assert CountingKind.peak <= 20
    assert CountingKind.batches_at_once == 3  # the old path ran one batch at a time
