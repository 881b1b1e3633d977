"""Freeze-aware waves and scheduled starts: the rollout never starts a wave it cannot finish.

Deterministic workflow code, composed into ``GuardedChange`` like :mod:`workflows.bake`: a
:class:`WaveTimingPlanner` receives the change's :class:`~workflows.change_run.ChangeRun` (status,
the interruptible wait an operator's abort or rollback ends, resume and recheck), its
:class:`~workflows.paging.Pager` and its :class:`~workflows.gate_loop.GateLoop`, and stops the
rollout by raising :class:`~workflows.unwind.Unwind`. The timing answer comes from the
``check_wave_timing`` activity, which resolves the ``change-window`` rules from the bundle the
worker holds then (so a calendar edit or a new bundle mid-rollout is seen before the next wave).

The rules (docs/change-windows.md):

- Before every wave, the wave and its bake (plus each rule's ``wave_allowance``) must fit before
  the next freeze or window close of every ``change-window`` rule.
- The first wave that does not fit waits (durable timer, ``retry_after`` in the status) for the
  earliest start at which it fits, then gates again: nothing is changed yet.
- A later wave that does not fit (a freeze ahead, or one that began since: a calendar edit, a new
  bundle) applies the strictest ``mid_rollout`` choice of the rules it does not fit: ``finish``
  (the wave in flight has finished; hold, page the team, go on by itself when the rules open),
  ``pause`` (page, wait for an operator: ``resume`` holds until the rules open, ``rollback`` or
  ``abort`` undo; unanswered for a day: roll back) or ``rollback`` (undo now). A mixed fleet is
  never left unattended: every hold mid-rollout pages.

Everything here runs behind ``workflow.patched(WAVE_TIMING_PATCH)`` (histories recorded before it
take the old path); a ``not_before`` wait needs no patch, since no earlier request could carry one.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    from workflows.change_run import ChangeRun
    from workflows.gate_loop import GateLoop
    from workflows.models import ChangeContext, ChangeRequest, Outcome, Phase, WaveProgress
    from workflows.paging import Pager
    from workflows.summaries import clock, line
    from workflows.timing_models import WaveTimingInput, WaveTimingResult
    from workflows.types import format_duration
    from workflows.unwind import Unwind

WAVE_TIMING_PATCH = "freeze-aware-waves"
"""The ``workflow.patched`` id of the timing check before each wave (docs/versioning.md)."""
UNKNOWN_RETRY = timedelta(minutes=5)
"""How soon to ask again when no fitting start is known (an unreadable calendar, none in sight)."""
FREEZE_PAUSE_TIMEOUT = timedelta(hours=24)
"""How long a rollout paused by a freeze waits for an operator before it rolls back."""


class WaveTimingPlanner:
    """The timing check before each wave, and the ``not_before`` wait of a scheduled change."""

    def __init__(self, change: ChangeRun, pager: Pager, gate: GateLoop) -> None:
        self._change = change
        self._pager = pager
        self._gate = gate

    # ------------------------------------------------------------ not_before

    async def until_not_before(self, request: ChangeRequest) -> None:
        """A scheduled change waits, on a durable timer, until its ``not_before`` (abortable)."""
        start = request.not_before
        if start is None or start <= workflow.now():
            return
        self._hold(start, "", f"scheduled for {start.isoformat()} (not_before); gates then")
        await self._change.wait(
            lambda: False, start - workflow.now(), summary=line(f"scheduled: until {clock(start)}")
        )

    # ------------------------------------------------------------ before each wave

    async def fit_wave(
        self, ctx: ChangeContext, deadline: datetime, wave: WaveProgress, waves: int
    ) -> None:
        """Return once the wave and its bake fit every timing rule; else wait, pause or unwind."""
        change, status = self._change, self._change.status
        label = f"wave {wave.index + 1}/{waves}"
        while True:
            timing = await self._wave_timing(ctx, wave, waves)
            if timing.fits:
                status.wave_timing = None
                return
            status.wave_timing = timing
            why = timing.why()
            now = workflow.now()
            until = timing.earliest or now + UNKNOWN_RETRY
            # No fitting start before the deadline, or none known (a calendar read failed since
            # the gate, or no opening lasts long enough).
            late = timing.earliest is None or until >= deadline
            when = timing.earliest_label or until.isoformat()
            if not status.applied:  # nothing changed yet: wait for the opening, gate again
                if late and not any(r.error for r in timing.rules):
                    status.message = (
                        f"{label} cannot finish before the timing rules close ({why}); no start "
                        f"that fits comes before the deadline {deadline.isoformat()}"
                    )
                    await self._gate.deadline_passed()
                    raise Unwind(Outcome.REJECTED, status.message)
                await self._gate.release_locks()
                self._hold(until, timing, f"{label} waits: {why}; scheduled for {when}")
                await change.wait(
                    lambda: change.recheck,  # an operator's recheck asks again early
                    until - now,
                    summary=line(f"{label} waits until {clock(until)}"),
                )
                change.recheck = False
                if await self._gate.until_proceed(ctx, deadline, categories=None) is None:
                    raise Unwind(Outcome.REJECTED, status.message)
                continue
            choice = timing.choice()
            if choice == "rollback":
                raise Unwind(
                    Outcome.ROLLED_BACK,
                    f"rolled back before {label} (mid_rollout: rollback): {why}",
                )
            then = (
                "no start that fits comes before the deadline: the re-gate decides (a closed rule "
                "blocks, approvable, until the deadline)"
                if late
                else f"scheduled for {when}"
            )
            if choice == "pause":
                await self._pause_for_timing(label, why, then)
            else:
                await self._pager.page(
                    f"{change.change_id} holds before {label} (mid_rollout: finish): {why}; {then}"
                )
            if late:
                return  # the re-gate before the wave judges, as it did before this check
            self._hold(
                until, timing, f"{label} held mid-rollout: {why}; scheduled for {when} (paged)"
            )
            await change.wait(
                lambda: change.recheck,
                until - workflow.now(),
                summary=line(f"{label} held mid-rollout until {clock(until)}"),
            )
            change.recheck = False

    async def _pause_for_timing(self, label: str, why: str, then: str) -> None:
        """Page and wait for an operator: resume goes on (``then``); no answer: roll back."""
        change = self._change
        change.resumed = False
        await self._pager.page(
            f"{change.change_id} paused before {label} (mid_rollout: pause): {why}; resume: "
            f"{then}; rollback or abort undo it"
        )
        change.set_phase(
            Phase.PAUSED,
            f"paused before {label} (mid_rollout: pause): {why}; paged {change.request.team}; "
            f"resume: {then}; rollback undoes it",
        )
        pause = line(f"paused before {label}: resume or rollback")
        if not await change.wait(lambda: change.resumed, FREEZE_PAUSE_TIMEOUT, summary=pause):
            raise Unwind(
                Outcome.ROLLED_BACK,
                f"rolled back: nobody answered the page within "
                f"{format_duration(FREEZE_PAUSE_TIMEOUT)}; {why}",
            )
        change.resumed = False

    def _hold(self, until: datetime, timing: WaveTimingResult | str, message: str) -> None:
        """Phase ``Waiting`` until ``until``, shown as the status's ``retry_after``."""
        status = self._change.status
        self._change.set_phase(Phase.WAITING, message)
        status.retry_after = until
        timed = isinstance(timing, WaveTimingResult) and timing.rules
        status.retry_zone = timing.rules[0].timezone if timed else ""  # type: ignore[union-attr]

    async def _wave_timing(
        self, ctx: ChangeContext, wave: WaveProgress, waves: int
    ) -> WaveTimingResult:
        request, status = self._change.request, self._change.status
        return await calls.check_wave_timing(
            WaveTimingInput(
                change=ctx.model_dump(mode="json"),
                policy=request.policy,
                at=workflow.now(),
                bake=request.rollout.bake,
                wave=wave.index,
                waves=waves,
                approved=sorted(
                    {a.guardrail for a in status.approvals if a.expires_at > workflow.now()}
                ),
            ),
            summary=line(f"check timing of wave {wave.index + 1}/{waves}"),
        )
