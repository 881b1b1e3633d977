"""The TargetLock queue alone: first come first served, hand-over, leaving, hostile input."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.locks import LockActivities
from guardrails.base import CheckContext, Services
from guardrails.builtin.target_lock import TargetLock
from worker.converter import data_converter
from worker.devserver import temporal_binary
from workflows import errors
from workflows.models import (
    Category,
    ChangeContext,
    CheckResult,
    CheckSpec,
    CheckStatus,
    LockHolder,
    OptOut,
    ReleaseLocksInput,
    Target,
    TargetLockInput,
    lock_id,
)
from workflows.target_lock import TargetLockWorkflow


@workflow.defn(name="FakeChange")
class FakeChange:
    """Stands in for a GuardedChange: runs until told to finish, records its rechecks."""

    def __init__(self) -> None:
        self.rechecks: list[Any] = []
        self.done = False

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: self.done)

    @workflow.signal(name="recheck")
    def recheck(self, payload: Any) -> None:
        self.rechecks.append(payload)

    @workflow.signal(name="finish")
    def finish(self) -> None:
        self.done = True

    @workflow.query(name="rechecks")
    def seen(self) -> list[Any]:
        return self.rechecks


@dataclass
class Lab:
    client: Client
    task_queue: str
    prefix: str
    started: list[str] = field(default_factory=list)
    targets: set[str] = field(default_factory=set)  # every target a check of this test locked

    async def change(self, name: str) -> WorkflowHandle[Any, Any]:
        self.started.append(name)
        return await self.client.start_workflow(
            "FakeChange", id=f"{self.prefix}-{name}", task_queue=self.task_queue
        )

    def cid(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    async def lock(self, holder: str, *, watch: str = "1h") -> WorkflowHandle[Any, Any]:
        return await self.client.start_workflow(
            "TargetLock",
            TargetLockInput(
                target_id=self.prefix,
                holder=LockHolder(change_id=self.cid(holder), team="t"),
                watch_every=watch,
            ),
            id=lock_id(self.prefix),
            task_queue=self.task_queue,
        )

    def handle(self) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(lock_id(self.prefix))

    async def enqueue(self, name: str) -> None:
        await self.handle().signal("enqueue", LockHolder(change_id=self.cid(name)))

    async def release(self, name: str, *, leave_queue: bool = False) -> None:
        await self.handle().signal(
            "release", ReleaseLocksInput(change_id=self.cid(name), leave_queue=leave_queue)
        )

    async def state(self) -> tuple[str, list[str]]:
        """The holder and the queue, as short names."""
        s: TargetLockInput = await self.handle().query("state", result_type=TargetLockInput)
        cut = len(self.prefix) + 1
        return s.holder.change_id[cut:], [w.change_id[cut:] for w in s.queue]

    async def until(
        self, ready: Callable[[tuple[str, list[str]]], bool], within: float = 15
    ) -> tuple[str, list[str]]:
        for _ in range(int(within * 20)):
            try:
                got = await self.state()
                if ready(got):
                    return got
            except Exception:  # between runs of a continue-as-new
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"lock state never matched; last {await self.state()}")


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """This module's own time-skipping server.

    Hand-overs signal fake changes after a test's worker is gone; on the session's shared server
    such a task, waiting in a queue nobody polls, would stop time skipping for every later test.
    """
    environment = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter,
        test_server_existing_path=temporal_binary("temporal-test-server"),
    )
    yield environment
    await environment.shutdown()


@pytest.fixture
async def lab(env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[Lab]:
    """A worker with the real TargetLock and holder_alive, and FakeChange as the changes."""
    async with Worker(
        env.client,
        task_queue=task_queue,
        workflows=[TargetLockWorkflow, FakeChange],
        activities=[LockActivities(env.client).holder_alive],
        workflow_runner=UnsandboxedWorkflowRunner(),
        max_cached_workflows=0,
    ):
        lab = Lab(env.client, task_queue, f"q{uuid.uuid4().hex[:8]}")
        yield lab
        # Nothing of this test may outlive its worker: the time-skipping server never skips time
        # while a workflow task waits in a queue no worker polls, which would stall later tests.
        locks = [lock_id(t) for t in sorted(lab.targets)]
        for wid in (lock_id(lab.prefix), *locks, *(lab.cid(n) for n in lab.started)):
            with contextlib.suppress(RPCError):  # already closed
                await env.client.get_workflow_handle(wid).terminate("test over")


async def _task_failures(handle: WorkflowHandle[Any, Any]) -> list[str]:
    out = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            out.append(event.workflow_task_failed_event_attributes.failure.message)
    return out


async def _rechecks(change: WorkflowHandle[Any, Any]) -> list[Any]:
    got: list[Any] = await change.query("rechecks")
    return got


async def test_hand_over_in_arrival_order_skipping_closed_waiters(lab: Lab) -> None:
    """Release hands the lock to waiters in arrival order, skips closed ones, tells each one."""
    a, b, c, d = [await lab.change(n) for n in "abcd"]
    await lab.lock("a")
    for name in ("b", "c", "d", "b", "a"):  # b again keeps its place; the holder is not queued
        await lab.enqueue(name)
    assert await lab.until(lambda s: len(s[1]) == 3) == ("a", ["b", "c", "d"])
    await c.signal("finish")
    await c.result()
    await lab.release("b")  # not the holder, not leaving: ignored
    await lab.release("a")
    assert await lab.until(lambda s: s[0] == "b") == ("b", ["c", "d"])
    assert await _rechecks(b) == [
        {"requested_by": "target-lock", "reason": f"lock of {lab.prefix} handed over by {a.id}"}
    ]
    await lab.release("b")
    assert await lab.until(lambda s: s[0] == "d") == ("d", [])
    assert [r["reason"] for r in await _rechecks(d)] == [
        f"lock of {lab.prefix} handed over by {b.id}"
    ]
    assert await _rechecks(c) == []
    await lab.release("d", leave_queue=True)  # from the holder, leave_queue still releases
    assert await lab.handle().result() == f"released by {d.id}"


async def test_leave_queue_and_expiry_hand_over(lab: Lab) -> None:
    """A waiter that leaves is skipped; an expired holder's lock goes to the next waiter."""
    a, b, c = [await lab.change(n) for n in "abc"]
    await lab.lock("a", watch="1s")
    for name in ("b", "c"):
        await lab.enqueue(name)
    await lab.until(lambda s: s[1] == ["b", "c"])
    await lab.release("b", leave_queue=True)
    assert await lab.until(lambda s: s[1] == ["c"]) == ("a", ["c"])
    await a.terminate("test: holder gone")
    assert await lab.until(lambda s: s[0] == "c") == ("c", [])
    assert len(await _rechecks(c)) == 1
    assert await _rechecks(b) == []
    await c.signal("finish")
    await c.result()
    assert await lab.handle().result() == f"expired: {c.id} is no longer running"


def _raw(data: bytes, encoding: bytes = b"json/plain") -> RawValue:
    return RawValue(Payload(metadata={"encoding": encoding}, data=data))


async def test_hostile_signals_and_queries_never_fail_a_task(lab: Lab) -> None:
    """Garbage signals and queries are ignored; the lock keeps working and no task ever fails."""
    await lab.change("a")
    b = await lab.change("b")
    lock = await lab.lock("a")
    garbage: list[list[Any]] = [
        [],
        [None],
        [42],
        ["x"],
        [{"change_id": lab.cid("b")}, {"change_id": lab.cid("b")}],
        [_raw(b"\xff\xfe not json", b"binary/plain")],
        [_raw(b"{not json")],
        [{"change_id": "x" * 10_000}],
        [{"change_id": [lab.cid("b")], "leave_queue": "maybe"}],
    ]
    for args in garbage:
        for name in ("enqueue", "release"):
            await lock.signal(name, args=args)
    await lock.query("holder", args=[None, 3])
    assert await lab.state() == ("a", [])
    await lab.enqueue("b")
    await lab.release("a")
    assert await lab.until(lambda s: s[0] == "b") == ("b", [])
    assert len(await _rechecks(b)) == 1
    assert await _task_failures(lock) == []  # the run that got the garbage


@pytest.mark.parametrize(
    "args",
    [
        [],
        [None],
        [7],
        [{"target_id": "elsewhere", "holder": {"change_id": "a"}}],
        [{"holder": {"change_id": "a"}}],
        [{"target_id": "same", "holder": {"change_id": ""}}],
        [{"target_id": "same", "holder": {"change_id": "a"}}, {}],
    ],
    ids=["none", "null", "number", "other-target", "no-target", "no-holder", "two-args"],
)
async def test_bad_lock_input_ends_the_lock_at_once(lab: Lab, args: list[Any]) -> None:
    """A lock started with a bad input fails at once with InvalidInput, never a failed task."""
    args = [
        {**a, "target_id": lab.prefix}
        if isinstance(a, dict) and a.get("target_id") == "same"
        else a
        for a in args
    ]
    handle = await lab.client.start_workflow(
        "TargetLock",
        args=args,
        id=lock_id(lab.prefix),
        task_queue=lab.task_queue,
        execution_timeout=timedelta(minutes=5),
    )
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == errors.INVALID_INPUT
    assert cause.message.startswith("lock refused: ")
    assert await _task_failures(handle) == []


# ------------------------------------------------------------------ the guardrail against real locks


def _ctx(
    lab: Lab,
    name: str,
    targets: list[str],
    *,
    probe: bool = False,
    deadline: datetime | None = None,
) -> CheckContext:
    change = ChangeContext(
        change_id=lab.cid(name),
        kind="recording",
        team=f"team-{name}",
        environment="prod",
        targets=[Target(id=f"{lab.prefix}.{t}") for t in targets],
        deadline=deadline,
    )
    lab.targets.update(f"{lab.prefix}.{t}" for t in targets)
    spec = CheckSpec(
        guardrail="target-lock",
        category=Category.CONCURRENCY,
        owner="release-eng",
        opt_out=OptOut.FORBIDDEN,
    )
    return CheckContext(
        change=change,
        spec=spec,
        now=datetime.now(UTC).replace(microsecond=0),
        services=Services(temporal_client=lab.client, task_queue=lab.task_queue),
        probe_only=probe,
    )


async def _check(ctx: CheckContext, **params: Any) -> CheckResult:
    guardrail = TargetLock()
    return await guardrail.check(guardrail.parse_params(params), ctx)


async def _queue_of(lab: Lab, target: str) -> tuple[str, list[str]] | None:
    handle = lab.client.get_workflow_handle(lock_id(f"{lab.prefix}.{target}"))
    desc = await handle.describe()
    if desc.status is not WorkflowExecutionStatus.RUNNING:
        return None
    s: TargetLockInput = await handle.query("state", result_type=TargetLockInput)
    cut = len(lab.prefix) + 1
    return s.holder.change_id[cut:], [w.change_id[cut:] for w in s.queue]


async def test_check_queues_behind_the_holder_and_passes_once_handed_over(lab: Lab) -> None:
    """Conflicts wait in arrival order with the holder's phase; probing looks; hand-over passes."""
    x, y, _z, _w = [await lab.change(n) for n in "xyzw"]
    t = f"{lab.prefix}.t"
    held = await _check(_ctx(lab, "x", ["t"]))
    assert (held.status, held.reason) == (
        CheckStatus.PASS,
        "all 1 target lock(s) are held by this change",
    )
    first = _ctx(lab, "y", ["t"])
    queued = await _check(first, requeue_every="45s")
    since = first.now.isoformat(timespec="seconds")
    assert (queued.status, queued.reason, queued.retry_after) == (
        CheckStatus.WAIT,
        f"{t} is locked by change {x.id} (team team-x, recording, phase running) since {since}; "
        "this change is number 1 of 1 in its queue",
        first.now + timedelta(seconds=45),
    )
    assert x.id in queued.remedy
    assert (queued.evidence["position"], queued.evidence["queue_length"]) == (1, 1)
    assert (await _check(_ctx(lab, "z", ["t"]))).reason.endswith("number 2 of 2 in its queue")
    assert (await _check(_ctx(lab, "y", ["t"]))).reason.endswith("number 1 of 2 in its queue")
    probe = await _check(_ctx(lab, "w", ["t"], probe=True))
    assert probe.status is CheckStatus.WAIT
    assert probe.reason.endswith("; 2 change(s) queued behind it")
    assert await _queue_of(lab, "t") == ("x", ["y", "z"])  # the probe queued nothing

    await lab.client.get_workflow_handle(lock_id(t)).signal(
        "release", ReleaseLocksInput(change_id=x.id, target_ids=[t], leave_queue=True)
    )
    for _ in range(200):
        if (await _rechecks(y)) and (await _queue_of(lab, "t") or ("", []))[0] == "y":
            break
        await asyncio.sleep(0.05)
    assert await _queue_of(lab, "t") == ("y", ["z"])
    assert (await _check(_ctx(lab, "y", ["t"]))).status is CheckStatus.PASS


async def test_a_conflict_leaves_every_later_lock_and_waits_short_of_the_deadline(
    lab: Lab,
) -> None:
    """Queued on a lower target, a change leaves later queues; retry_after stops before deadline."""
    for n in "xyw":
        await lab.change(n)
    assert (await _check(_ctx(lab, "x", ["b"]))).status is CheckStatus.PASS
    got = await _check(_ctx(lab, "y", ["a", "b"]))
    assert got.status is CheckStatus.WAIT and got.evidence["target"] == f"{lab.prefix}.b"
    assert await _queue_of(lab, "b") == ("x", ["y"])
    for _ in range(100):  # y gave back a, taken in that attempt
        if await _queue_of(lab, "a") is None:
            break
        await asyncio.sleep(0.05)
    assert await _queue_of(lab, "a") is None
    assert (await _check(_ctx(lab, "w", ["a"]))).status is CheckStatus.PASS
    ctx = _ctx(lab, "y", ["a", "b"], deadline=datetime.now(UTC) + timedelta(seconds=10))
    assert ctx.change.deadline is not None
    got = await _check(ctx)
    assert (got.status, got.evidence["target"]) == (CheckStatus.WAIT, f"{lab.prefix}.a")
    assert got.retry_after == ctx.change.deadline - timedelta(seconds=1)
    assert await _queue_of(lab, "a") == ("w", ["y"])
    assert await _queue_of(lab, "b") == ("x", [])


async def _free(lab: Lab, target: str, *changes: str) -> None:
    """Release and leave ``target``'s lock for ``changes`` and wait for it to end.

    Terminating a lock instead could cut its ``holder_alive`` activity short, and the time-skipping
    server never releases the time lock of an activity whose workflow has closed.
    """
    handle = lab.client.get_workflow_handle(lock_id(f"{lab.prefix}.{target}"))
    for name in changes:
        await handle.signal(
            "release",
            ReleaseLocksInput(
                change_id=lab.cid(name), target_ids=[f"{lab.prefix}.{target}"], leave_queue=True
            ),
        )
    await handle.result()


class BusyQueries:
    """``lab.client``, except that its next ``failures`` lock queries fail as a busy server's do."""

    def __init__(self, client: Client, failures: int, status: RPCStatusCode) -> None:
        self._client, self.failures, self._status = client, failures, status

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_workflow_handle(self, *args: Any, **kwargs: Any) -> Any:
        handle = self._client.get_workflow_handle(*args, **kwargs)
        outer = self

        class Handle:
            def __getattr__(self, name: str) -> Any:
                return getattr(handle, name)

            async def query(self, *a: Any, **kw: Any) -> Any:
                if outer.failures > 0:
                    outer.failures -= 1
                    raise RPCError("consistent query buffer is full", outer._status, b"")
                return await handle.query(*a, **kw)

        return Handle()


async def test_a_lock_that_does_not_answer_waits_and_gates_again_instead_of_blocking(
    lab: Lab,
) -> None:
    """Chaos finding: a busy lock query was an ``error`` (blocked until a recheck; 12 of 500 lost).

    It is a ``wait`` that gates again by ``requeue_every``: nothing proceeds, nothing is stuck.
    Both for a change that has not reached the lock's queue yet and for the holder itself (a
    rollout re-gating before its next wave), which keeps its lock.
    """
    x, _y = [await lab.change(n) for n in "xy"]
    t = f"{lab.prefix}.t"
    assert (await _check(_ctx(lab, "x", ["t"]))).status is CheckStatus.PASS

    for name in ("y", "x"):  # a newcomer, then the holder re-gating mid-rollout
        busy = BusyQueries(lab.client, failures=1, status=RPCStatusCode.RESOURCE_EXHAUSTED)
        ctx = _ctx(lab, name, ["t"])
        ctx.services = replace(ctx.services, temporal_client=busy)
        result = await _check(ctx, requeue_every="20s")
        assert (result.status, result.retry_after) == (
            CheckStatus.WAIT,
            ctx.now + timedelta(seconds=20),
        ), result
        assert result.reason.startswith(
            f"the lock of {t} did not answer (RESOURCE_EXHAUSTED: consistent query buffer is full)"
        )
        assert "gates again on its own every" in result.remedy
        assert busy.failures == 0
        assert await _queue_of(lab, "t") == ("x", [])  # the holder kept it; nobody was queued

    # Once the lock answers, the newcomer queues behind the holder as usual.
    queued = await _check(_ctx(lab, "y", ["t"]))
    assert queued.status is CheckStatus.WAIT and queued.reason.endswith(
        "number 1 of 1 in its queue"
    )
    assert x.id in queued.remedy
    await _free(lab, "t", "x", "y")


async def test_a_refused_lock_query_still_fails_closed(lab: Lab) -> None:
    """Only a busy or unreachable server waits: any other RPC failure stays an error of the check."""
    await lab.change("x")
    await lab.change("y")
    assert (await _check(_ctx(lab, "x", ["t"]))).status is CheckStatus.PASS
    ctx = _ctx(lab, "y", ["t"])
    ctx.services = replace(
        ctx.services,
        temporal_client=BusyQueries(lab.client, failures=1, status=RPCStatusCode.PERMISSION_DENIED),
    )
    with pytest.raises(RPCError):
        await _check(ctx)
    await _free(lab, "t", "x")
