"""``target-lock``: strong exclusion per target, so two changes never modify the same target at once.

Locks are ``TargetLock`` workflows with id ``lock/<target>`` (see ``workflows/target_lock.py``):
starting one is atomic on the Temporal server. A change takes every lock of its targets in sorted
order, all or nothing. Taking a lock the change already holds succeeds (re-gates before waves, and
locks handed over to it).

On the first lock held by someone else the change **queues** behind the holder: it asks the lock to
``enqueue`` it (asking again keeps its place), gives back what it took in this attempt, leaves (or
gives back) every lock sorted *after* that target, and returns ``wait``. The reason names the
holder with the holder's phase as it is now (its ``ChangePhase`` search attribute, read at every
check), and the change's place in the queue; ``retry_after`` is ``now + requeue_every``, a
fallback: when the holder releases, the lock makes the first waiter the holder and signals it
``recheck``, so it gates at once and passes here.

Ordered acquisition cannot deadlock: after every check, a waiting change holds only locks sorted
before the one it waits for (hence "leaves every lock after it"), so no cycle of waits can form
(the argument in full: ``workflows/target_lock.py``, ``docs/locks.md``).

In probe mode (``changeguard checks``) it only looks: it takes and queues for nothing, and reports
the holder and the length of its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from guardrails.base import CheckContext, Guardrail
from workflows.ids import lock_id
from workflows.models import (
    Category,
    CheckResult,
    Duration,
    LockHolder,
    OptOut,
    ReleaseLocksInput,
    TargetLockInput,
)
from workflows.target_lock import TargetLockWorkflow
from workflows.types import excerpt

ATTEMPTS = 3
"""Tries to take or queue for one lock while it changes hands under us."""

FANOUT = 20
"""Concurrent calls when leaving the locks sorted after a conflict."""


class TargetLockParams(BaseModel):
    """Params of ``target-lock``."""

    model_config = ConfigDict(extra="forbid")
    watch_every: Duration = Field(
        default=timedelta(seconds=60),
        description="how often a lock checks that its holder still runs (the lease granularity)",
    )
    requeue_every: Duration = Field(
        default=timedelta(seconds=30),
        gt=timedelta(0),
        description=(
            "how often a change queued behind a holder gates again (a fallback: the hand-over "
            "wakes it at once), which also keeps its report current"
        ),
    )


class TargetLock(Guardrail[TargetLockParams]):
    """Take (or, probing, look at) the lock of every target of the change; queue when held."""

    name = "target-lock"
    category = Category.CONCURRENCY
    params_model = TargetLockParams
    default_owner = "release-eng"
    default_timeout = timedelta(seconds=60)
    default_opt_out = OptOut.FORBIDDEN
    description = "two changes never modify the same target at once; later ones queue"

    async def check(self, params: TargetLockParams, ctx: CheckContext) -> CheckResult:
        """Take every lock, or queue behind the holder of the first one that is taken."""
        client: Client | None = ctx.services.temporal_client
        task_queue = ctx.services.task_queue
        if client is None or not task_queue:
            return ctx.error(
                "target-lock needs the worker's Temporal client and task queue",
                remedy="run this guardrail inside a changeguard worker (worker.main.build_worker)",
            )
        me = ctx.change.change_id
        targets = sorted({t.id for t in ctx.change.targets})
        if ctx.probe_only:
            try:
                return await _probe(client, ctx, params, targets)
            except RPCError as exc:
                if exc.status not in BUSY:
                    raise
                return _busy(ctx, params, targets[0] if targets else "?", exc)
        taken: list[str] = []
        target = ""
        try:
            for i, target in enumerate(targets):
                taken_now, queued = await _take_or_queue(client, target, task_queue, ctx, params)
                if queued is None:
                    if taken_now:
                        taken.append(target)
                    continue
                await _release(client, ReleaseLocksInput(change_id=me, target_ids=taken))
                await _leave_later(client, me, targets[i + 1 :])
                return await _queued(client, ctx, params, queued)
        except RPCError as exc:
            if exc.status not in BUSY:
                raise
            # Give back what this attempt took, as a queued change does (best effort: the server
            # is busy; a lock whose holder gates again and does not take it is released by its
            # lease). Locks held from an earlier gate stay held: a rollout keeps its targets.
            with contextlib.suppress(Exception):
                await _release(client, ReleaseLocksInput(change_id=me, target_ids=taken))
            return _busy(ctx, params, target, exc)
        return ctx.passed(
            f"all {len(targets)} target lock(s) are held by this change",
            evidence={"targets": targets},
        )


BUSY = frozenset(
    {
        RPCStatusCode.RESOURCE_EXHAUSTED,  # e.g. "consistent query buffer is full" on a hot lock
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.CANCELLED,  # the client's own rpc_timeout ("Timeout expired")
        RPCStatusCode.UNAVAILABLE,
    }
)
"""Answers of a busy or briefly unreachable server: the lock could not be read *now*."""

RPC_TIMEOUT = timedelta(seconds=10)
"""Bound of each look at a lock (describe, query): a busy lock answers ``wait``, within the check's
own timeout, instead of the check timing out into an ``error`` that blocks until a recheck."""


def _busy(ctx: CheckContext, params: TargetLockParams, target: str, exc: RPCError) -> CheckResult:
    """The lock did not answer: wait and gate again by ``requeue_every`` (never ``proceed``).

    An ``error`` here would block the change until someone rechecks it, and a change that never
    reached a lock's queue is woken by no hand-over: the chaos campaign left 12 of 500 changes
    ``Blocked`` that way (docs/chaos.md). Waiting keeps it safe (nothing is applied, I1) and live.
    """
    retry_after = _retry_after(ctx, params)
    return ctx.wait(
        f"the lock of {target} did not answer ({exc.status.name if exc.status else '?'}: "
        f"{excerpt(exc.message, 200)}); this change gates again by "
        f"{retry_after.isoformat(timespec='seconds')}",
        remedy=(
            "nothing to do: the Temporal server or the lock's worker is busy; this change gates "
            f"again on its own every {params.requeue_every} until the lock answers"
        ),
        retry_after=retry_after,
        evidence={"target": target, "rpc_status": exc.status.name if exc.status else None},
    )


def _waiter(ctx: CheckContext) -> LockHolder:
    return LockHolder(
        change_id=ctx.change.change_id, team=ctx.change.team, kind=ctx.change.kind, since=ctx.now
    )


async def _take_or_queue(
    client: Client, target: str, task_queue: str, ctx: CheckContext, params: TargetLockParams
) -> tuple[bool, TargetLockInput | None]:
    """``(taken now, None)`` when the lock is ours; ``(False, lock state)`` when queued behind it."""
    me = ctx.change.change_id
    state: TargetLockInput | None = None
    for _ in range(ATTEMPTS):
        holder = await _acquire(client, target, task_queue, ctx, params)
        if holder is None:
            return True, None
        if holder.change_id == me:
            return False, None
        state = await _enqueue(client, target, _waiter(ctx))
        if state is None:
            continue  # the lock ended meanwhile: try to take it
        if state.holder.change_id == me:
            return False, None  # handed over to us just now
        if any(w.change_id == me for w in state.queue):
            return False, state
        await asyncio.sleep(0.2)  # released and ending with nobody queued: look again
    if state is None:
        state = TargetLockInput(target_id=target, holder=holder)
    return False, state  # still held, our place unknown (queue full?): wait and try again later


async def _state(client: Client, target: str) -> TargetLockInput | None:
    """The running lock of ``target`` (holder and queue), or ``None`` when it is free."""
    handle = client.get_workflow_handle(lock_id(target))
    try:
        desc = await handle.describe(rpc_timeout=RPC_TIMEOUT)
        if desc.status is not WorkflowExecutionStatus.RUNNING:
            return None
        try:
            state: TargetLockInput = await handle.query(
                TargetLockWorkflow.state, rpc_timeout=RPC_TIMEOUT
            )
            return state
        except (WorkflowQueryFailedError, WorkflowQueryRejectedError):
            # A lock run by a worker of an older version answers only ``holder``.
            holder: LockHolder = await handle.query(
                TargetLockWorkflow.holder, rpc_timeout=RPC_TIMEOUT
            )
            return TargetLockInput(target_id=target, holder=holder)
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return None
        raise


async def _acquire(
    client: Client, target: str, task_queue: str, ctx: CheckContext, params: TargetLockParams
) -> LockHolder | None:
    """Start the lock; ``None`` when we took it now, else its holder (maybe us already)."""
    for _ in range(ATTEMPTS):
        try:
            await client.start_workflow(
                TargetLockWorkflow.run,
                TargetLockInput(
                    target_id=target, holder=_waiter(ctx), watch_every=params.watch_every
                ),
                id=lock_id(target),
                task_queue=task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )
            return None
        except WorkflowAlreadyStartedError:
            current = await _state(client, target)
            if current is not None:
                return current.holder
            await asyncio.sleep(0.2)  # released between our start and our look: try again
    raise RuntimeError(f"could not take or inspect the lock of {target}")


async def _enqueue(client: Client, target: str, waiter: LockHolder) -> TargetLockInput | None:
    """Ask to wait for the lock (idempotent); the lock's state after, ``None`` if it has ended."""
    try:
        await client.get_workflow_handle(lock_id(target)).signal(TargetLockWorkflow.enqueue, waiter)
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return None
        raise
    return await _state(client, target)


async def _signal_release(client: Client, target: str, release: ReleaseLocksInput) -> None:
    try:
        await client.get_workflow_handle(lock_id(target)).signal(
            TargetLockWorkflow.release, release
        )
    except RPCError as exc:
        if exc.status is not RPCStatusCode.NOT_FOUND:
            raise


async def _release(client: Client, release: ReleaseLocksInput) -> None:
    """Give back the locks taken in this attempt (all or nothing)."""
    for target in release.target_ids:
        await _signal_release(client, target, release)


async def _leave_later(client: Client, me: str, targets: list[str]) -> None:
    """Leave the queue of, or give back, every lock of ``targets`` this change is in.

    These sort after the lock the change now waits for: holding or waiting for them is left over
    from an earlier gate that got further, and would break the ordering that rules out deadlock.
    Locks the change is not in are only looked at (a query writes no history).
    """
    limit = asyncio.Semaphore(FANOUT)
    leave = ReleaseLocksInput(change_id=me, leave_queue=True)

    async def one(target: str) -> None:
        async with limit:
            state = await _state(client, target)
            if state is None:
                return
            if state.holder.change_id == me or any(w.change_id == me for w in state.queue):
                await _signal_release(
                    client, target, leave.model_copy(update={"target_ids": [target]})
                )

    # Best effort: a lock we could not reach now is left at the next check (every requeue_every).
    await asyncio.gather(*(one(t) for t in targets), return_exceptions=True)


async def _phase(client: Client, change_id: str) -> str:
    """The holder's phase now: its ``ChangePhase`` search attribute, else its status."""
    try:
        desc = await client.get_workflow_handle(change_id).describe()
    except RPCError:
        return "unknown phase"
    values: dict[str, Any] = {k.name: v for k, v in desc.typed_search_attributes}
    phase = values.get("ChangePhase")
    if phase:
        return str(phase)
    return desc.status.name.lower() if desc.status else "unknown phase"


def _retry_after(ctx: CheckContext, params: TargetLockParams) -> datetime:
    """``now + requeue_every``, but short of the deadline, so the change waits until it."""
    at = ctx.now + params.requeue_every
    deadline = ctx.change.deadline
    if deadline is not None and at >= deadline:
        at = max(ctx.now, deadline - timedelta(seconds=1))
    return at


def _held_by(state: TargetLockInput, phase: str) -> str:
    h = state.holder
    since = h.since.isoformat(timespec="seconds") if h.since else "an unknown time"
    return (
        f"{state.target_id} is locked by change {h.change_id} (team {h.team or '?'}, "
        f"{h.kind or '?'}, phase {phase}) since {since}"
    )


def _evidence(state: TargetLockInput, phase: str, **more: Any) -> dict[str, Any]:
    return {
        "target": state.target_id,
        "holder": state.holder.model_dump(mode="json"),
        "phase": phase,
        "queue_length": len(state.queue),
        **more,
    }


async def _queued(
    client: Client, ctx: CheckContext, params: TargetLockParams, state: TargetLockInput
) -> CheckResult:
    me = ctx.change.change_id
    holder = state.holder
    phase = await _phase(client, holder.change_id)
    ids = [w.change_id for w in state.queue]
    position = ids.index(me) + 1 if me in ids else None
    place = (
        f"this change is number {position} of {len(ids)} in its queue"
        if position is not None
        else f"{len(ids)} change(s) queued; this change's place is not known yet"
    )
    return ctx.wait(
        f"{_held_by(state, phase)}; {place}",
        remedy=(
            f"nothing to do: this change proceeds on its own when {holder.change_id} releases "
            f"{state.target_id} (every outcome releases it) and the changes before it are done; "
            f"to hurry, coordinate with team {holder.team or '?'}; abort this change to leave "
            "the queue"
        ),
        retry_after=_retry_after(ctx, params),
        evidence=_evidence(state, phase, position=position),
    )


async def _probe(
    client: Client, ctx: CheckContext, params: TargetLockParams, targets: list[str]
) -> CheckResult:
    """Look only: the first lock held by another change, with its holder and queue length."""
    me = ctx.change.change_id
    for target in targets:
        state = await _state(client, target)
        if state is None or state.holder.change_id == me:
            continue
        phase = await _phase(client, state.holder.change_id)
        return ctx.wait(
            f"{_held_by(state, phase)}; {len(state.queue)} change(s) queued behind it",
            remedy=(
                f"started now, this change would queue behind {state.holder.change_id} "
                "and proceed on its own when the lock is handed to it"
            ),
            retry_after=_retry_after(ctx, params),
            evidence=_evidence(state, phase),
        )
    return ctx.passed(f"all {len(targets)} target lock(s) are free", evidence={"targets": targets})
