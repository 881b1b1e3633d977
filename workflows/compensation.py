"""After a stop: compensate every applied step, or, past the point of no return, hold for a human.

Deterministic workflow code, composed into ``GuardedChange``. :class:`PointOfNoReturn` keeps what
irreversible steps have changed (from mutation results, failures and ``TargetBatch`` reports) and
what needs a human; :class:`Compensation` decides how a stopped change ends and hands the workflow
an :class:`Ending` (the outcome and message it finishes with, and whether the run then ends
cancelled). The rule (docs/long-running-changes.md): before the first irreversible step a failure
unwinds the saga; once one has run, nothing pretends to undo it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    import workflows.observe as observe
    from workflows.change_run import ChangeRun
    from workflows.models import ApplyResult, BatchResult, ChangeStatus, Outcome, Phase
    from workflows.mutations import irreversible_in
    from workflows.paging import Pager
    from workflows.saga import Saga
    from workflows.unwind import Unwind, compensable, failure_of, stop_reason

BATCH_IRREVERSIBLE_PATCH = "batch-irreversible"
"""``workflow.patched`` id: irreversible steps a ``TargetBatch`` ran reach the point of no return."""
HUMAN_DECISION_TIMEOUT = timedelta(hours=24)
"""How long a change stopped past its point of no return waits for resume or abort."""


@dataclass(frozen=True)
class Ending:
    """How a stopped change finishes: its outcome and message, then maybe a cancellation."""

    outcome: Outcome
    message: str
    cancelled: str | None = None
    """When set, the run ends cancelled with this message once the outcome is recorded."""


class PointOfNoReturn:
    """The irreversible steps in effect per target, and the targets that need a human."""

    def __init__(self, status: ChangeStatus) -> None:
        self._status = status
        self.irreversible: dict[str, list[str]] = {}  # target → irreversible steps in effect
        self.needs_repair: list[str] = []

    def note_result(self, result: ApplyResult) -> None:
        """Remember targets an irreversible step has changed: nothing may pretend to undo them."""
        if result.irreversible:
            self.irreversible[result.target_id] = list(result.irreversible)

    def note_error(self, target_id: str, exc: BaseException) -> None:
        """A failed mutation may still have left an irreversible step in effect (its details)."""
        steps = irreversible_in(exc)
        if steps:
            self.irreversible[target_id] = steps

    def note_batch(self, batch: BatchResult, *, failed: bool = False) -> None:
        """Take a batch's irreversible steps as the change's own: its point of no return.

        Behind a patch: they decide between unwinding and holding, and older workers unwound.
        """
        past = batch.irreversible or (failed and self.irreversible)
        if not past or not workflow.patched(BATCH_IRREVERSIBLE_PATCH):
            return
        self.irreversible.update(batch.irreversible)
        if failed:  # its applied targets are left as they are: a human needs to know them
            self._status.applied.extend(t for t in batch.done if t not in self._status.applied)

    def repair_list(self) -> list[str]:
        """What a human must repair: each irreversible target with its steps, then the others."""
        marked = [f"{t} ({', '.join(s)})" for t, s in self.irreversible.items()]
        return marked + [t for t in self._status.applied if t not in self.irreversible]


class Compensation:
    """End a stopped change: unwind its saga, or hold it for a human past the point of no return."""

    def __init__(self, change: ChangeRun, saga: Saga, past: PointOfNoReturn, pager: Pager) -> None:
        self._change = change
        self._saga = saga
        self._past = past
        self._pager = pager

    async def hold_for_a_human(
        self, exc: BaseException, roll_forward: Callable[[], Awaitable[None]]
    ) -> Ending:
        """After an irreversible step ran, a failure pauses and pages instead of unwinding.

        An operator's ``abort`` or ``rollback`` then ends the change ``failed`` at once; any other
        stop (a failed mutation, a bake's rollback, a gate that no longer passes) pauses and pages
        its team: ``resume`` rolls forward (``roll_forward``: gate again, then run the rollout
        again — applied targets replay idempotently, the failed one is retried); ``abort`` or
        ``rollback`` ends the change ``failed`` with exactly which targets and steps need manual
        repair, undoing nothing. A cancellation or a day without a decision ends it the same way.
        """
        change = self._change
        while True:
            why = stop_reason(exc)
            if isinstance(exc, Unwind) and exc is change.stop:
                # An operator's abort or rollback is the human decision: end, undoing nothing.
                return self._unrepaired(why)
            if is_cancelled_exception(exc):
                return self._unrepaired(why, cancelled=True)
            change.stop = None
            change.resumed = False
            repair = ", ".join(self._past.repair_list()[:20])
            await self._pager.page(
                f"{change.change_id} stopped past its point of no return ({why}); irreversible "
                f"steps ran on {repair}: resume to roll forward, or abort to end it failed",
                within=timedelta(minutes=5),
            )
            change.set_phase(
                Phase.PAUSED,
                f"past the point of no return: {why}; irreversible steps ran on {repair}; "
                "resume rolls forward, abort ends the change failed (nothing is undone)",
            )
            try:
                decided = await change.wait(
                    lambda: change.resumed,
                    HUMAN_DECISION_TIMEOUT,
                    summary="wait for resume or abort (past the point of no return)",
                )
            except Unwind as stop:
                return self._unrepaired(stop.message)
            except asyncio.CancelledError:
                return self._unrepaired("the workflow was cancelled", cancelled=True)
            if not decided:
                return self._unrepaired(f"{why}; nobody decided within {HUMAN_DECISION_TIMEOUT}")
            change.resumed = False
            try:
                await roll_forward()
            except BaseException as again:
                if not compensable(again):
                    raise
                exc = again
                continue
            applied = len(change.status.applied)
            return Ending(
                Outcome.COMPLETED, f"rolled forward after a stop; applied to {applied} target(s)"
            )

    def _unrepaired(self, why: str, *, cancelled: bool = False) -> Ending:
        """End ``failed`` without undoing anything, naming what needs a human.

        A cancelled run still ends as cancelled (after recording its outcome), as an unwind does.
        """
        self._past.needs_repair = self._past.repair_list()
        shown = ", ".join(self._past.needs_repair[:50])
        return Ending(
            Outcome.FAILED,
            f"{why}; nothing was undone; needs a human: {shown}",
            cancelled=why if cancelled else None,
        )

    async def unwind(self, exc: BaseException) -> Ending:
        """Compensate every applied step; a cancelled run ends cancelled once done."""
        change, past = self._change, self._past
        # A cancel may surface as the activity's or the gate child's failure, whose cause is the
        # cancellation: every form counts, or a cancelled change would end "rejected".
        cancelled = is_cancelled_exception(exc)
        if isinstance(exc, Unwind):
            outcome, why = exc.outcome, exc.message
        elif cancelled:
            outcome, why = Outcome.ABORTED, "the workflow was cancelled"
        else:
            message, kind = failure_of(exc)
            outcome, why = Outcome.ROLLED_BACK, f"{kind}: {message}"
            if not self._saga.steps:
                # Nothing was mutated: the change never started (a policy the gate cannot use,
                # an unreadable operator directory …), so it is rejected, not rolled back.
                outcome, why = Outcome.REJECTED, f"the change could not start: {why}"
        change.set_phase(Phase.ROLLING_BACK, f"rolling back: {why}")
        _, failures = await self._saga.unwind()
        change.status.compensation_failures = failures
        if failures:
            observe.compensations_failed(len(failures), kind=change.request.kind)
            outcome = Outcome.FAILED
            why += f"; {len(failures)} compensation(s) failed: " + ", ".join(
                f.step for f in failures
            )
            # Targets whose own revert failed; a failed batch names its targets in needs_repair.
            past.needs_repair.extend(f.step for f in failures if not f.step.startswith("batch "))
            repair = ", ".join(past.needs_repair[:50]) or "see the compensation failures"
            why += f"; needs a human: {repair}"
            await self._pager.page(
                f"{change.change_id} FAILED: compensation failed; targets left changed that need "
                f"a human: {repair}"
            )
        return Ending(outcome, why, cancelled=why if cancelled else None)
