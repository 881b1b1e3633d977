"""target-lock: strong per-target exclusion between real changes on the dev server; queues."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from guardrails.builtin.target_lock import TargetLock
from tests import fakes
from tests.fakes import Ledger, RecordingKind
from tests.helpers import until_phase, until_status
from worker.main import build_worker
from workflows.models import (
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    CheckResult,
    CheckStatus,
    OperatorAction,
    OperatorActionResult,
    Outcome,
    Phase,
    TargetLockInput,
    lock_id,
)


@pytest.fixture(autouse=True)
def ledger() -> Ledger:
    RecordingKind.ledger = Ledger()
    return RecordingKind.ledger


def _request(
    targets: list[str],
    *,
    delay: float,
    team: str,
    bake: str = "0s",
    name: str = "lock",
    hold: str = "",
) -> ChangeRequest:
    return ChangeRequest(
        change_id=f"{name}-{uuid.uuid4().hex[:8]}",
        kind="recording",
        summary="lock race",
        requester="alice",
        team=team,
        environment="prod",
        targets=[{"id": t} for t in targets],
        params={"delay": delay, "hold": hold},
        rollout={"waves": ["100%"], "max_parallel": 5, "bake": bake},
    )


def _bundle(requeue_every: str = "1s") -> dict[str, Any]:
    """The platform bundle: target-lock alone, its lease watched every second."""
    return {
        "guardrails": [
            {
                "use": "target-lock",
                "params": {"watch_every": "1s", "requeue_every": requeue_every},
            }
        ]
    }


def _registry() -> Any:
    registry = fakes.guardrails()
    registry.register(TargetLock)
    return registry


def _worker(env: WorkflowEnvironment, task_queue: str, requeue_every: str = "1s") -> Any:
    return build_worker(
        env.client,
        task_queue=task_queue,
        guardrails=_registry(),
        kinds=fakes.kinds(),
        bundle=_bundle(requeue_every),
        max_cached_workflows=0,
    )


def _cid(req: ChangeRequest) -> str:
    assert req.change_id is not None
    return req.change_id


async def _start(env: WorkflowEnvironment, task_queue: str, req: ChangeRequest) -> Any:
    return await env.client.start_workflow(
        "GuardedChange", req, id=_cid(req), task_queue=task_queue, result_type=ChangeResult
    )


def _lock_check(status: ChangeStatus) -> CheckResult | None:
    if status.report is None:
        return None
    return next((c for c in status.report.checks if c.guardrail == "target-lock"), None)


def _queued(status: ChangeStatus, fragment: str = "") -> bool:
    """Waiting behind a lock holder, the target-lock reason containing ``fragment``."""
    check = _lock_check(status)
    return (
        status.phase is Phase.WAITING
        and check is not None
        and check.status is CheckStatus.WAIT
        and fragment in check.reason
    )


async def _lock_closed(env: WorkflowEnvironment, target: str, within: float = 15) -> str:
    handle = env.client.get_workflow_handle(lock_id(target))
    for _ in range(int(within * 10)):
        desc = await handle.describe()
        if desc.status is not WorkflowExecutionStatus.RUNNING:
            return str(await handle.result())
        await asyncio.sleep(0.1)
    raise AssertionError(f"lock of {target} still held")


async def _lock_state(env: WorkflowEnvironment, target: str) -> TargetLockInput:
    handle = env.client.get_workflow_handle(lock_id(target))
    state: TargetLockInput = await handle.query("state", result_type=TargetLockInput)
    return state


async def _task_failures(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Every WorkflowTaskFailed event of the run, with its failure message."""
    out = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            out.append(event.workflow_task_failed_event_attributes.failure.message)
    return out


def _applied_order(ledger: Ledger, target: str) -> list[str]:
    """Change ids in the order they applied ``target`` (idempotency keys ``change:step:target``)."""
    return [k.split(":")[0] for k in ledger.keys if k.endswith(f":{target}")]


async def test_exactly_one_of_two_racing_changes_proceeds_the_other_queues(
    dev_env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """Two changes racing on a shared target: one runs, the other waits its turn, then runs."""
    # The winner's mutation waits for the test (a fixed delay could end before the loser gated).
    a = _request(["r1", "r2"], delay=0, team="payments", hold="race")
    b = _request(["r2", "r3"], delay=0, team="search", hold="race")
    async with _worker(dev_env, task_queue):
        ha, hb = await asyncio.gather(*(_start(dev_env, task_queue, r) for r in (a, b)))
        sa, sb = await asyncio.gather(
            until_status(ha, lambda s: s.phase is Phase.EXECUTING or _queued(s)),
            until_status(hb, lambda s: s.phase is Phase.EXECUTING or _queued(s)),
        )
        assert sorted([sa.phase, sb.phase]) == [Phase.EXECUTING, Phase.WAITING]
        (winner, wreq), (loser, _) = (
            ((ha, a), (hb, b)) if sa.phase is Phase.EXECUTING else ((hb, b), (ha, a))
        )
        lock = _lock_check(sb if loser is hb else sa)
        assert lock is not None
        assert (lock.status, lock.opt_out.value) == (CheckStatus.WAIT, "forbidden")
        assert lock.reason.startswith(f"r2 is locked by change {wreq.change_id} (team {wreq.team}")
        assert lock.reason.endswith("this change is number 1 of 1 in its queue")
        assert _cid(wreq) in lock.remedy

        ledger.gate("race").set()
        assert (await winner.result()).outcome is Outcome.COMPLETED
        assert (await loser.result()).outcome is Outcome.COMPLETED  # no recheck sent
    assert sorted(ledger.applied) == ["r1", "r2", "r2", "r3"]
    for t in ("r1", "r2", "r3"):
        assert (await _lock_closed(dev_env, t)).startswith("released")


async def test_a_queued_change_proceeds_on_its_own_naming_the_holders_phase(
    dev_env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """While the holder bakes the waiter's report says so; when it completes the waiter runs."""
    holder = _request(["q1"], delay=0, team="payments", bake="6s", name="holder")
    waiter = _request(["q1", "q2"], delay=0, team="search", name="waiter")
    async with _worker(dev_env, task_queue):
        hh = await _start(dev_env, task_queue, holder)
        await until_phase(hh, Phase.EXECUTING, Phase.BAKING)
        hw = await _start(dev_env, task_queue, waiter)
        since = f"(team payments, recording, phase {Phase.BAKING.value}) since"
        baking = await until_status(hw, lambda s: _queued(s, since), within=20)
        lock = _lock_check(baking)
        assert lock is not None
        assert lock.reason.startswith(f"q1 is locked by change {holder.change_id} {since}")
        assert lock.evidence["phase"] == Phase.BAKING.value
        assert lock.retry_after is not None
        assert (await hh.result()).outcome is Outcome.COMPLETED
        result = await hw.result()  # nobody sends a recheck
    assert result.outcome is Outcome.COMPLETED
    assert _applied_order(ledger, "q1") == [holder.change_id, waiter.change_id]
    for t in ("q1", "q2"):
        assert (await _lock_closed(dev_env, t)) == f"released by {waiter.change_id}"


async def test_three_changes_on_one_target_are_served_in_arrival_order(
    dev_env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """Holder, then two waiters in order: the lock is handed over in arrival order."""
    # The holders keep their mutation open until the test has seen the queue (a fixed delay
    # raced the gates of the waiters on a loaded machine: CI saw the holder finish first).
    first = _request(["s1"], delay=0, team="payments", name="first", hold="first")
    second = _request(["s1"], delay=0, team="search", name="second", hold="second")
    third = _request(["s1"], delay=0, team="web", name="third")
    # Only the hand-over wakes a waiter: its fallback re-gate is an hour away.
    async with _worker(dev_env, task_queue, requeue_every="1h"):
        h1 = await _start(dev_env, task_queue, first)
        await until_phase(h1, Phase.EXECUTING)
        h2 = await _start(dev_env, task_queue, second)
        await until_status(h2, lambda s: _queued(s, "number 1 of 1"))
        h3 = await _start(dev_env, task_queue, third)
        await until_status(h3, lambda s: _queued(s, "number 2 of 2"))
        state = await _lock_state(dev_env, "s1")
        assert (state.holder.change_id, [w.change_id for w in state.queue]) == (
            first.change_id,
            [second.change_id, third.change_id],
        )
        ledger.gate("first").set()
        await until_phase(h2, Phase.EXECUTING)
        state = await _lock_state(dev_env, "s1")
        assert (state.holder.change_id, [w.change_id for w in state.queue]) == (
            second.change_id,
            [third.change_id],
        )
        ledger.gate("second").set()
        results = await asyncio.gather(h1.result(), h2.result(), h3.result())
    assert [r.outcome for r in results] == [Outcome.COMPLETED] * 3
    assert _applied_order(ledger, "s1") == [first.change_id, second.change_id, third.change_id]
    assert (await _lock_closed(dev_env, "s1")) == f"released by {third.change_id}"


async def test_an_aborted_waiter_leaves_the_queue_and_the_next_gets_the_lock(
    dev_env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """Aborting a queued change takes it out of the queue; the waiter after it is served next."""
    first = _request(["x1"], delay=0, team="payments", name="first", hold="first")
    second = _request(["x1"], delay=0, team="search", name="second")
    third = _request(["x1"], delay=0, team="web", name="third")
    async with _worker(dev_env, task_queue, requeue_every="1h"):
        h1 = await _start(dev_env, task_queue, first)
        await until_phase(h1, Phase.EXECUTING)
        h2 = await _start(dev_env, task_queue, second)
        await until_status(h2, lambda s: _queued(s, "number 1 of 1"))
        h3 = await _start(dev_env, task_queue, third)
        await until_status(h3, lambda s: _queued(s, "number 2 of 2"))
        answer = await h2.execute_update(
            "abort",
            OperatorAction(operator="oscar", reason="superseded"),
            result_type=OperatorActionResult,
        )
        assert answer.accepted
        assert (await h2.result()).outcome is Outcome.ABORTED
        for _ in range(100):
            if [w.change_id for w in (await _lock_state(dev_env, "x1")).queue] == [third.change_id]:
                break
            await asyncio.sleep(0.1)
        state = await _lock_state(dev_env, "x1")
        assert (state.holder.change_id, [w.change_id for w in state.queue]) == (
            first.change_id,
            [third.change_id],
        )
        ledger.gate("first").set()
        assert (await h1.result()).outcome is Outcome.COMPLETED
        assert (await h3.result()).outcome is Outcome.COMPLETED
    assert _applied_order(ledger, "x1") == [first.change_id, third.change_id]


async def test_hostile_signals_never_fail_a_lock_task(
    dev_env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    """No payload, null, a number, two args: ignored, no WorkflowTaskFailed; the lock still works."""
    holder = _request(["h1"], delay=0, team="payments", name="holder", hold="holder")
    waiter = _request(["h1"], delay=0, team="search", name="waiter")
    async with _worker(dev_env, task_queue, requeue_every="1h"):
        hh = await _start(dev_env, task_queue, holder)
        await until_phase(hh, Phase.EXECUTING)
        lock = dev_env.client.get_workflow_handle(lock_id("h1"))
        run = dev_env.client.get_workflow_handle(lock.id, run_id=(await lock.describe()).run_id)
        garbage: list[list[Any]] = [
            [],
            [None],
            [42],
            [{"change_id": holder.change_id}, {"change_id": holder.change_id}],
            [{"change_id": 7, "leave_queue": "yes"}],
        ]
        for args in garbage:
            for name in ("release", "enqueue"):
                await run.signal(name, args=args)
        await run.query("holder", args=[None, 1])
        state = await _lock_state(dev_env, "h1")
        assert (state.holder.change_id, state.queue) == (holder.change_id, [])
        hw = await _start(dev_env, task_queue, waiter)
        await until_status(hw, lambda s: _queued(s, "number 1 of 1"))
        ledger.gate("holder").set()
        assert (await hh.result()).outcome is Outcome.COMPLETED
        assert (await hw.result()).outcome is Outcome.COMPLETED
    assert await _task_failures(run) == []
    assert (await _lock_closed(dev_env, "h1")) == f"released by {waiter.change_id}"
    assert await _task_failures(lock) == []  # the last run of the chain
    assert _applied_order(ledger, "h1") == [holder.change_id, waiter.change_id]


async def test_cancel_releases_and_terminate_expires_the_lease(
    dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    """A cancelled change releases its locks; a terminated one's locks expire by their watch."""
    a = _request(["c1"], delay=30, team="payments")
    b = _request(["c2"], delay=30, team="payments")
    async with _worker(dev_env, task_queue):
        ha = await _start(dev_env, task_queue, a)
        hb = await _start(dev_env, task_queue, b)
        await asyncio.gather(until_phase(ha, Phase.EXECUTING), until_phase(hb, Phase.EXECUTING))
        await ha.cancel()
        assert (await _lock_closed(dev_env, "c1", within=40)).startswith("released")
        await hb.terminate("test: worker lost")
        assert (await _lock_closed(dev_env, "c2")) == f"expired: {b.change_id} is no longer running"


async def test_probe_only_gate_takes_no_lock(dev_env: WorkflowEnvironment, task_queue: str) -> None:
    """The gate run alone (changeguard checks) reports the locks as free and takes none."""
    from workflows.models import ChangeContext, GateInput, GuardrailReport

    req = _request(["p1", "p2"], delay=0, team="payments")
    async with _worker(dev_env, task_queue):
        report = await dev_env.client.execute_workflow(
            "GuardrailGate",
            GateInput(change=ChangeContext.of(req), probe_only=True),
            id=f"{req.change_id}/checks-1",
            task_queue=task_queue,
            result_type=GuardrailReport,
        )
    assert report.checks[0].reason == "all 2 target lock(s) are free"
    count = await dev_env.client.count_workflows(
        "WorkflowType = 'TargetLock' AND WorkflowId STARTS_WITH 'lock/p'"
    )
    assert count.count == 0
