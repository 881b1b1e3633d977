"""Lock activities: release a change's target locks (and leave their queues); is a holder alive."""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from workflows.ids import lock_id
from workflows.models import HolderAliveInput, ReleaseLocksInput
from workflows.target_lock import TargetLockWorkflow


class LockActivities:
    """Activities the lock protocol needs, bound to a client.

    Args:
        client: the worker's Temporal client.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    @activity.defn(name="release_target_locks")
    async def release_target_locks(self, inp: ReleaseLocksInput) -> int:
        """Signal ``release`` to each target's lock; locks held by others ignore it.

        With ``leave_queue`` (the change is ending) a lock where the change waits removes it from
        its queue instead; the payload is passed through as it is.

        It heartbeats after every lock (and once at the start), so that a worker that dies in it
        is noticed within the heartbeat timeout the workflow sets, not after the whole
        start-to-close timeout. A retried attempt signals every lock again: a lock ignores the
        release of a change that no longer holds it or waits in its queue.

        Returns:
            How many lock workflows received the signal (missing or finished ones are skipped).
        """
        limit = asyncio.Semaphore(20)
        done = 0
        activity.heartbeat(done)

        async def one(target: str) -> int:
            nonlocal done
            async with limit:
                try:
                    await self.client.get_workflow_handle(lock_id(target)).signal(
                        TargetLockWorkflow.release, inp
                    )
                    return 1
                except RPCError as exc:
                    if exc.status is RPCStatusCode.NOT_FOUND:
                        return 0
                    raise
                finally:
                    done += 1
                    activity.heartbeat(done)

        return sum(await asyncio.gather(*(one(t) for t in inp.target_ids)))

    @activity.defn(name="holder_alive")
    async def holder_alive(self, inp: HolderAliveInput) -> bool:
        """True while the holder's ``GuardedChange`` workflow is running."""
        try:
            desc = await self.client.get_workflow_handle(inp.change_id).describe()
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                return False
            raise
        return desc.status is WorkflowExecutionStatus.RUNNING
