"""The ``TargetLock`` workflow: strong per-target exclusion, using Temporal itself as the mutex.

One lock is one running workflow with id ``lock/<target>``. Starting a workflow under an id that is
already running fails atomically on the server, so of two changes racing for a target exactly one
gets it. The lock ends when its holder releases it (every terminal outcome of the change, and any
gate that does not proceed), or — as a lease — when a periodic watch finds the holder's workflow no
longer running (terminated, timed out, or gone). Long holds continue-as-new to keep history small.

**The queue.** A change that finds the lock held asks to wait (``enqueue``), first come first
served; asking again keeps its place. When the holder releases the lock, or the lease expires, the
lock does not end if changes are waiting: it skips waiters that are no longer running, makes the
first live one the holder (continue-as-new with that holder and the rest of the queue) and signals
its ``GuardedChange`` ``recheck``, so its gate runs at once, finds itself the holder and passes.
A change that ends sends ``release`` with ``leave_queue``: from the holder that releases, from a
waiter it leaves the queue; any other ``release`` is ignored.

**Why queues cannot deadlock.** A change takes its locks in sorted target order and stops at the
first one it cannot take, queueing there; on that conflict it gives back what it took in that
attempt and leaves (or gives back) every lock *after* that target (``guardrails/builtin/
target_lock.py``). So, after each gate, a waiting change holds only locks on targets sorted before
the one it waits for: a handed-over lock is always a lower one. A cycle of waits would need some
change to hold a lock sorted after the one it waits for, which that rule forbids. A hand-over that
lands between gates (a stale place in a later queue) is corrected by the very ``recheck`` the
hand-over sends.

**Hostile input** (docs/design.md, I10). Every entry point takes ``*args`` and decodes it with
:func:`workflows.inputs.decode`: a bad start ends the lock at once with the reason (a failed
workflow, never a failed task); a bad signal is logged and ignored; queries ignore their input.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    import workflows.ids as ids
    import workflows.names as names
    from workflows.errors import INVALID_INPUT
    from workflows.inputs import Refusal, decode
    from workflows.models import (
        HolderAliveInput,
        LockHolder,
        RecheckInput,
        ReleaseLocksInput,
        TargetLockInput,
        valid_id,
    )
    from workflows.types import NAME_MAX, excerpt

MAX_WATCHES_PER_RUN = 200
"""Lease watches per run before the lock continues as new (history stays small)."""

MAX_QUEUE = 500
"""Waiters one lock accepts; beyond that an ``enqueue`` is ignored (the waiter re-gates later)."""

MIN_WATCH = timedelta(seconds=1)
"""The lease watch never runs more often than this, whatever the input says."""


@workflow.defn(name="TargetLock")
class TargetLockWorkflow:
    """Hold one target for one change until released or the holder is gone; then hand it over."""

    @workflow.init
    def __init__(self, *args: Any) -> None:
        decoded = decode(TargetLockInput, args, what="the lock input")
        self._refusal: Refusal | None = decoded if isinstance(decoded, Refusal) else None
        wid = workflow.info().workflow_id
        target = ids.lock_target(wid)
        if isinstance(decoded, TargetLockInput):
            if decoded.target_id != target:
                self._refusal = Refusal(
                    f"the lock input names target {excerpt(decoded.target_id, 120)!r}, "
                    f"but this is the lock of {excerpt(target, 120)!r}"
                )
            elif problem := _waiter_problem(decoded.holder):
                self._refusal = Refusal(f"the lock's holder is invalid: {problem}")
            inp = decoded
        else:
            inp = TargetLockInput(target_id=target, holder=LockHolder(change_id=""))
        self._target = inp.target_id
        self._holder = inp.holder
        self._watch_every = max(inp.watch_every, MIN_WATCH)
        self._queue: list[LockHolder] = []
        for waiter in inp.queue:
            self._add(waiter)
        self._released = False
        self._candidate: str | None = None  # a waiter being checked for the hand-over
        self._candidate_left = False

    @workflow.run
    async def run(self, *args: Any) -> str:
        """Hold, watching the holder; hand over to the next waiter; returns how the lock ended."""
        if self._refusal is not None:
            raise ApplicationError(
                f"lock refused: {self._refusal.why}", type=INVALID_INPUT, non_retryable=True
            )
        ended = await self._hold()
        while ended is not None:
            nxt = await self._next_waiter()
            if nxt is None:
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self._queue:  # someone asked to wait while we were finishing
                    continue
                return ended
            previous, self._holder, self._released = self._holder, nxt, False
            self._show()
            if not await self._tell(nxt, previous):
                ended = f"{nxt.change_id} closed before taking the lock"
                continue
            await workflow.wait_condition(workflow.all_handlers_finished)
            if self._released:  # the new holder already gave it back
                ended = f"released by {nxt.change_id}"
                continue
            ended = None
        await workflow.wait_condition(workflow.all_handlers_finished)
        # A lock is long-lived: each new run moves to the current worker build (docs/versioning.md).
        workflow.continue_as_new(
            self._snapshot(),
            initial_versioning_behavior=workflow.ContinueAsNewVersioningBehavior.AUTO_UPGRADE,
        )

    # ---------------------------------------------------------------- holding

    async def _hold(self) -> str | None:
        """Wait for release or expiry (how it ended), or ``None`` when it is time to continue."""
        self._show()
        for _ in range(MAX_WATCHES_PER_RUN):
            try:
                await workflow.wait_condition(
                    lambda: self._released or workflow.info().is_continue_as_new_suggested(),
                    timeout=self._watch_every,
                    timeout_summary=f"watch holder {self._holder.change_id}"[:200],
                )
            except TimeoutError:
                if not await self._alive(self._holder.change_id):
                    return f"expired: {self._holder.change_id} is no longer running"
                continue
            if self._released:
                return f"released by {self._holder.change_id}"
            return None
        return None

    async def _next_waiter(self) -> LockHolder | None:
        """Pop waiters until one is still running (it becomes the holder), or none is left."""
        while self._queue:
            waiter = self._queue.pop(0)
            self._candidate, self._candidate_left = waiter.change_id, False
            alive = await self._alive(waiter.change_id)
            self._candidate = None
            if alive and not self._candidate_left:
                return waiter
            workflow.logger.info(
                "lock hand-over skips a waiter that is gone",
                extra={"target": self._target, "waiter": waiter.change_id},
            )
        return None

    async def _tell(self, waiter: LockHolder, previous: LockHolder) -> bool:
        """Signal the new holder ``recheck``; ``False`` when it has closed meanwhile."""
        note = RecheckInput(
            requested_by="target-lock",
            reason=excerpt(f"lock of {self._target} handed over by {previous.change_id}", 1000),
        )
        try:
            await workflow.get_external_workflow_handle(waiter.change_id).signal(
                names.RECHECK, note
            )
        except FailureError as exc:
            workflow.logger.info(
                "lock hand-over: the new holder could not be told",
                extra={"target": self._target, "waiter": waiter.change_id, "error": str(exc)},
            )
            return False
        return True

    async def _alive(self, change_id: str) -> bool:
        try:
            return await calls.holder_alive(
                HolderAliveInput(change_id=change_id),
                summary=f"is {change_id} still running?"[:200],
            )
        except ActivityError:
            return True  # unsure: keep it; the lease watch asks again

    def _add(self, waiter: LockHolder) -> None:
        """Append a waiter unless it is invalid, holds the lock, waits already (keeps its place)."""
        if problem := _waiter_problem(waiter):
            workflow.logger.warning(f"enqueue ignored: {problem}", extra={"target": self._target})
            return
        if waiter.change_id == self._holder.change_id:
            return
        if any(w.change_id == waiter.change_id for w in self._queue):
            return
        if len(self._queue) >= MAX_QUEUE:
            workflow.logger.warning(
                "lock queue full: enqueue ignored",
                extra={"target": self._target, "waiter": waiter.change_id},
            )
            return
        self._queue.append(waiter)

    def _snapshot(self) -> TargetLockInput:
        return TargetLockInput(
            target_id=self._target,
            holder=self._holder,
            watch_every=self._watch_every,
            queue=list(self._queue),
        )

    def _show(self) -> None:
        h = self._holder
        waiting = f"; {len(self._queue)} change(s) waiting" if self._queue else ""
        workflow.set_current_details(
            f"**{self._target}** is held by change `{h.change_id}` (team {h.team or '?'},"
            f" {h.kind or '?'}) since {h.since.isoformat() if h.since else '?'}{waiting}"
        )

    # ---------------------------------------------------------------- handlers

    @workflow.signal(name="release")
    def release(self, *args: Any) -> None:
        """From the holder: release. From a waiter with ``leave_queue``: leave the queue."""
        inp = decode(ReleaseLocksInput, args, what="the release")
        if isinstance(inp, Refusal):
            workflow.logger.warning("release ignored: " + inp.why, extra={"target": self._target})
            return
        sender = inp.change_id
        if sender == self._holder.change_id:
            self._released = True
        elif inp.leave_queue and (
            sender == self._candidate or any(w.change_id == sender for w in self._queue)
        ):
            self._queue = [w for w in self._queue if w.change_id != sender]
            self._candidate_left = self._candidate_left or sender == self._candidate
            self._show()
        else:
            workflow.logger.info(
                "release ignored: not the holder", extra={"target": self._target, "sender": sender}
            )

    @workflow.signal(name="enqueue")
    def enqueue(self, *args: Any) -> None:
        """Wait for the lock (first come first served); asking again keeps the waiter's place."""
        inp = decode(LockHolder, args, what="the waiter")
        if isinstance(inp, Refusal):
            workflow.logger.warning("enqueue ignored: " + inp.why, extra={"target": self._target})
            return
        self._add(inp)
        self._show()

    @workflow.query(name="holder")
    def holder(self, *args: Any) -> LockHolder:
        """Who holds the lock (input ignored)."""
        return self._holder

    @workflow.query(name="state")
    def state(self, *args: Any) -> TargetLockInput:
        """The lock as it stands: target, holder, lease and queue (input ignored)."""
        return self._snapshot()


def _waiter_problem(who: LockHolder) -> str | None:
    """Why a holder or waiter is unacceptable (it travels in every continue-as-new), or ``None``."""
    if not valid_id(who.change_id):
        return f"change_id {excerpt(who.change_id, 140)!r} is not a change id"
    if len(who.team) > NAME_MAX or len(who.kind) > NAME_MAX:
        return f"team and kind must be at most {NAME_MAX} characters"
    return None
