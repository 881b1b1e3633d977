"""target-lock: strong per-target exclusion between real changes on the dev server."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from guardrails.builtin.target_lock import TargetLock
from tests import fakes
from tests.fakes import Ledger, RecordingKind
from tests.helpers import until_phase
from worker.main import build_worker
from workflows.models import (
    ChangeRequest,
    ChangeResult,
    CheckStatus,
    Outcome,
    Phase,
    RecheckInput,
    lock_id,
)


@pytest.fixture(autouse=True)
def ledger() -> Ledger:
    RecordingKind.ledger = Ledger()
    return RecordingKind.ledger


def _request(targets: list[str], *, delay: float, team: str) -> ChangeRequest:
    return ChangeRequest(
        change_id=f"lock-{uuid.uuid4().hex[:8]}",
        kind="recording",
        summary="lock race",
        requester="alice",
        team=team,
        environment="prod",
        targets=[{"id": t} for t in targets],  # type: ignore[misc]
        params={"delay": delay},
        rollout={"waves": ["100%"], "max_parallel": 5},  # type: ignore[arg-type]
        policy={"guardrails": [{"use": "target-lock", "params": {"watch_every": "1s"}}]},
    )


def _registry() -> Any:
    registry = fakes.guardrails()
    registry.register(TargetLock)
    return registry


async def _lock_closed(env: WorkflowEnvironment, target: str, within: float = 15) -> str:
    handle = env.client.get_workflow_handle(lock_id(target))
    for _ in range(int(within * 10)):
        desc = await handle.describe()
        if desc.status is not WorkflowExecutionStatus.RUNNING:
            return str(await handle.result())
        await asyncio.sleep(0.1)
    raise AssertionError(f"lock of {target} still held")


async def test_exactly_one_of_two_racing_changes_proceeds(
    dev_env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """Two changes racing on a shared target: one runs, the other is blocked naming the holder."""
    a = _request(["r1", "r2"], delay=2, team="payments")
    b = _request(["r2", "r3"], delay=2, team="search")
    async with build_worker(
        dev_env.client, task_queue=task_queue, guardrails=_registry(), kinds=fakes.kinds()
    ):
        ha, hb = await asyncio.gather(
            *(
                dev_env.client.start_workflow(
                    "GuardedChange",
                    r,
                    id=r.change_id,
                    task_queue=task_queue,
                    result_type=ChangeResult,
                )
                for r in (a, b)
            )
        )
        sa, sb = await asyncio.gather(
            until_phase(ha, Phase.EXECUTING, Phase.BLOCKED),
            until_phase(hb, Phase.EXECUTING, Phase.BLOCKED),
        )
        phases = sorted([sa.phase, sb.phase])
        assert phases == [Phase.BLOCKED, Phase.EXECUTING]
        (winner, wreq), (loser, _) = (
            ((ha, a), (hb, b)) if sa.phase is Phase.EXECUTING else ((hb, b), (ha, a))
        )
        blocked = sb if loser is hb else sa
        assert blocked.report is not None
        lock = blocked.report.checks[0]
        assert (lock.guardrail, lock.status, lock.opt_out.value) == (
            "target-lock",
            CheckStatus.FAIL,
            "forbidden",
        )
        assert lock.reason.startswith(f"r2 is locked by change {wreq.change_id} (team {wreq.team}")
        assert wreq.change_id in lock.remedy

        assert (await winner.result()).outcome is Outcome.COMPLETED
        assert (await _lock_closed(dev_env, "r2")).startswith("released")
        await loser.signal("recheck", RecheckInput(requested_by="test"))
        assert (await loser.result()).outcome is Outcome.COMPLETED
    assert sorted(ledger.applied) == ["r1", "r2", "r2", "r3"]
    for t in ("r1", "r2", "r3"):
        assert (await _lock_closed(dev_env, t)).startswith("released")


async def test_cancel_releases_and_terminate_expires_the_lease(
    dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    """A cancelled change releases its locks; a terminated one's locks expire by their watch."""
    a = _request(["c1"], delay=30, team="payments")
    b = _request(["c2"], delay=30, team="payments")
    async with build_worker(
        dev_env.client, task_queue=task_queue, guardrails=_registry(), kinds=fakes.kinds()
    ):
        ha = await dev_env.client.start_workflow(
            "GuardedChange", a, id=a.change_id, task_queue=task_queue
        )
        hb = await dev_env.client.start_workflow(
            "GuardedChange", b, id=b.change_id, task_queue=task_queue
        )
        await asyncio.gather(until_phase(ha, Phase.EXECUTING), until_phase(hb, Phase.EXECUTING))
        await ha.cancel()
        assert (await _lock_closed(dev_env, "c1", within=40)).startswith("released")
        await hb.terminate("test: worker lost")
        assert (await _lock_closed(dev_env, "c2")) == f"expired: {b.change_id} is no longer running"


async def test_probe_only_gate_takes_no_lock(dev_env: WorkflowEnvironment, task_queue: str) -> None:
    """The gate run alone (changeguard checks) reports the locks as free and takes none."""
    from workflows.models import ChangeContext, GateInput, GuardrailReport

    req = _request(["p1", "p2"], delay=0, team="payments")
    async with build_worker(
        dev_env.client, task_queue=task_queue, guardrails=_registry(), kinds=fakes.kinds()
    ):
        report = await dev_env.client.execute_workflow(
            "GuardrailGate",
            GateInput(change=ChangeContext.of(req), policy=req.policy, probe_only=True),
            id=f"{req.change_id}/checks-1",
            task_queue=task_queue,
            result_type=GuardrailReport,
        )
    assert report.checks[0].reason == "all 2 target lock(s) are free"
    count = await dev_env.client.count_workflows(
        "WorkflowType = 'TargetLock' AND WorkflowId STARTS_WITH 'lock/p'"
    )
    assert count.count == 0
