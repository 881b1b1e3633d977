"""The ``TargetLock`` workflow: strong per-target exclusion, using Temporal itself as the mutex.

One lock is one running workflow with id ``lock/<target>``. Starting a workflow under an id that is
already running fails atomically on the server, so of two changes racing for a target exactly one
gets it. The lock ends when its holder releases it (every terminal outcome of the change, and any
gate that does not proceed), or — as a lease — when a periodic watch finds the holder's workflow no
longer running (terminated, timed out, or gone). Long holds continue-as-new to keep history small.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.locks import LockActivities
    from workflows.models import HolderAliveInput, LockHolder, ReleaseLocksInput, TargetLockInput

MAX_WATCHES_PER_RUN = 200


@workflow.defn(name="TargetLock")
class TargetLockWorkflow:
    """Hold one target for one change until released or the holder is gone."""

    @workflow.init
    def __init__(self, inp: TargetLockInput) -> None:
        self._inp = inp
        self._released = False

    @workflow.run
    async def run(self, inp: TargetLockInput) -> str:
        """Wait for release, watching the holder; returns how the lock ended."""
        holder = inp.holder
        workflow.set_current_details(
            f"**{inp.target_id}** is held by change `{holder.change_id}` (team {holder.team or '?'},"
            f" {holder.kind or '?'}) since {holder.since.isoformat() if holder.since else '?'}"
        )
        for _ in range(MAX_WATCHES_PER_RUN):
            try:
                await workflow.wait_condition(lambda: self._released, timeout=inp.watch_every)
            except TimeoutError:
                if not await self._holder_alive():
                    return f"expired: {holder.change_id} is no longer running"
                continue
            return f"released by {holder.change_id}"
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp)

    async def _holder_alive(self) -> bool:
        try:
            return await workflow.execute_activity_method(
                LockActivities.holder_alive,
                HolderAliveInput(change_id=self._inp.holder.change_id),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError:
            return True  # unsure: keep the lock; the next watch asks again

    @workflow.signal(name="release")
    def release(self, inp: ReleaseLocksInput) -> None:
        """Release, if the sender is the holder (anyone else's release is ignored)."""
        if inp.change_id == self._inp.holder.change_id:
            self._released = True
        else:
            workflow.logger.warning(
                "release ignored: not the holder", extra={"sender": inp.change_id}
            )

    @workflow.query(name="holder")
    def holder(self) -> LockHolder:
        """Who holds the lock."""
        return self._inp.holder
