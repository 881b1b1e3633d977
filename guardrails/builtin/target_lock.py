"""``target-lock``: strong exclusion per target, so two changes never modify the same target at once.

Locks are ``TargetLock`` workflows with id ``lock/<target>`` (see ``workflows/target_lock.py``):
starting one is atomic on the Temporal server. A change takes every lock of its targets in sorted
order, all or nothing: on the first lock held by someone else it gives back what it took in this
attempt and fails, naming the holder (change, team, phase, since when). Taking a lock the change
already holds succeeds (re-gates before waves). In probe mode (``changeguard checks``) it only looks.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from guardrails.base import CheckContext, Guardrail
from workflows.models import (
    Category,
    CheckResult,
    Duration,
    LockHolder,
    OptOut,
    ReleaseLocksInput,
    TargetLockInput,
    lock_id,
)


class TargetLockParams(BaseModel):
    """Params of ``target-lock``."""

    model_config = ConfigDict(extra="forbid")
    watch_every: Duration = Field(
        default=timedelta(seconds=60),
        description="how often a lock checks that its holder still runs (the lease granularity)",
    )


class TargetLock(Guardrail[TargetLockParams]):
    """Take (or, probing, look at) the lock of every target of the change."""

    name = "target-lock"
    category = Category.CONCURRENCY
    params_model = TargetLockParams
    default_owner = "release-eng"
    default_timeout = timedelta(seconds=60)
    default_opt_out = OptOut.FORBIDDEN
    description = "two changes never modify the same target at once"

    async def check(self, params: TargetLockParams, ctx: CheckContext) -> CheckResult:
        """Take every lock, or report who holds the first one that is taken."""
        client: Client | None = ctx.services.get("temporal_client")
        task_queue = ctx.services.get("task_queue")
        if client is None or not task_queue:
            return ctx.error(
                "target-lock needs the worker's Temporal client and task queue",
                remedy="run this guardrail inside a changeguard worker (worker.main.build_worker)",
            )
        me = ctx.change.change_id
        targets = sorted(t.id for t in ctx.change.targets)
        taken: list[str] = []
        for target in targets:
            holder = await (
                _holder(client, target)
                if ctx.probe_only
                else _acquire(client, target, task_queue, ctx, params)
            )
            if holder is not None and holder.change_id != me:
                if taken:
                    await _release(client, me, taken)
                return await _conflict(client, ctx, target, holder)
            if holder is None and not ctx.probe_only:
                taken.append(target)
        verb = "are free" if ctx.probe_only else "are held by this change"
        return ctx.passed(
            f"all {len(targets)} target lock(s) {verb}", evidence={"targets": targets}
        )


async def _holder(client: Client, target: str) -> LockHolder | None:
    handle = client.get_workflow_handle(lock_id(target))
    try:
        desc = await handle.describe()
        if desc.status is not WorkflowExecutionStatus.RUNNING:
            return None
        holder: LockHolder = await handle.query("holder", result_type=LockHolder)
        return holder
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return None
        raise


async def _acquire(
    client: Client, target: str, task_queue: str, ctx: CheckContext, params: TargetLockParams
) -> LockHolder | None:
    """Start the lock; ``None`` when we took it now, else its holder (maybe us already)."""
    holder = LockHolder(
        change_id=ctx.change.change_id, team=ctx.change.team, kind=ctx.change.kind, since=ctx.now
    )
    for _ in range(3):
        try:
            await client.start_workflow(
                "TargetLock",
                TargetLockInput(target_id=target, holder=holder, watch_every=params.watch_every),
                id=lock_id(target),
                task_queue=task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            )
            return None
        except WorkflowAlreadyStartedError:
            current = await _holder(client, target)
            if current is not None:
                return current
            await asyncio.sleep(0.2)  # released between our start and our look: try again
    raise RuntimeError(f"could not take or inspect the lock of {target}")


async def _release(client: Client, change_id: str, targets: list[str]) -> None:
    release = ReleaseLocksInput(change_id=change_id, target_ids=targets)
    for target in targets:
        try:
            await client.get_workflow_handle(lock_id(target)).signal("release", release)
        except RPCError as exc:
            if exc.status is not RPCStatusCode.NOT_FOUND:
                raise


async def _conflict(
    client: Client, ctx: CheckContext, target: str, holder: LockHolder
) -> CheckResult:
    phase = "unknown phase"
    try:
        desc = await client.get_workflow_handle(holder.change_id).describe()
        values: dict[str, Any] = {k.name: v for k, v in desc.typed_search_attributes}
        phase = str(values.get("ChangePhase", desc.status.name if desc.status else phase))
    except RPCError:
        pass
    since = holder.since.isoformat(timespec="seconds") if holder.since else "an unknown time"
    return ctx.failed(
        f"{target} is locked by change {holder.change_id} (team {holder.team or '?'}, "
        f"{holder.kind or '?'}, phase {phase}) since {since}",
        remedy=(
            f"wait for {holder.change_id} to finish (its locks are released on every outcome), "
            f"or coordinate with team {holder.team or '?'}; then recheck"
        ),
        evidence={"target": target, "holder": holder.model_dump(mode="json"), "phase": phase},
    )
