"""The rollout: plan the waves, record the plan, then per wave fit, re-gate, apply and bake.

Deterministic workflow code, composed into ``GuardedChange``. A :class:`RolloutRunner` receives the
change's parts (its :class:`~workflows.change_run.ChangeRun`, gate loop, wave-timing planner, wave
applier, bake monitor and change-event emitter) and runs the waves in order; any stop raises out
of :meth:`RolloutRunner.execute` for the workflow's compensation to answer.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import workflows.observe as observe
    from workflows.bake import BakeMonitor
    from workflows.change_events import ChangeEventEmitter
    from workflows.change_run import ChangeRun
    from workflows.gate_loop import REGATE_CATEGORIES, GateLoop
    from workflows.models import (
        AuditAction,
        ChangeContext,
        ChangeRequest,
        Outcome,
        Phase,
        WaveProgress,
    )
    from workflows.unwind import Unwind
    from workflows.wave_apply import WaveApplier
    from workflows.wave_timing import WAVE_TIMING_PATCH, WaveTimingPlanner
    from workflows.waves import plan_waves

PLAN_PATCH = "plan-in-ledger"
"""The ``workflow.patched`` id of the wave plan's ledger record (docs/versioning.md)."""


class RolloutRunner:
    """Run a gated change's waves: timing, re-gate, apply, bake; and roll forward after a resume."""

    def __init__(
        self,
        change: ChangeRun,
        gate: GateLoop,
        timing: WaveTimingPlanner,
        waves: WaveApplier,
        bake: BakeMonitor,
        events: ChangeEventEmitter,
    ) -> None:
        self._change = change
        self._gate = gate
        self._timing = timing
        self._waves = waves
        self._bake = bake
        self._events = events

    async def execute(self, request: ChangeRequest, ctx: ChangeContext, deadline: datetime) -> None:
        """Apply and bake every wave in order; a stop or failure raises out of it."""
        change, status = self._change, self._change.status
        by_id = {t.id: t for t in request.targets}
        plan = plan_waves([t.id for t in request.targets], request.rollout.waves)
        status.waves = [WaveProgress(index=i, targets=ids) for i, ids in enumerate(plan)]
        await self.record_plan(plan)
        for wave in status.waves:
            if workflow.patched(WAVE_TIMING_PATCH):  # the wave and its bake must fit first
                await self._timing.fit_wave(ctx, deadline, wave, len(plan))
            if wave.index > 0:
                report = await self._gate.until_proceed(ctx, deadline, categories=REGATE_CATEGORIES)
                if report is None:
                    raise Unwind(Outcome.ROLLED_BACK, status.message)
            wave.state = "applying"
            change.set_phase(
                Phase.EXECUTING, f"wave {wave.index + 1}/{len(plan)}: {len(wave.targets)} target(s)"
            )
            await self._events.wave("wave_started", wave.index, len(plan), wave.targets)
            with observe.span("wave", observe.wave_attributes(wave), expected=(Unwind,)):
                await self._waves.apply(request, [by_id[i] for i in wave.targets], wave)
                await self._bake.bake(request, wave)
            wave.state = "done"
            await self._events.wave("wave_finished", wave.index, len(plan), wave.applied)

    async def roll_forward(
        self, request: ChangeRequest, ctx: ChangeContext, deadline: datetime
    ) -> None:
        """After a resume past the point of no return: gate again, then run the rollout again."""
        report = await self._gate.until_proceed(ctx, deadline, categories=REGATE_CATEGORIES)
        if report is None:
            raise Unwind(Outcome.FAILED, self._change.status.message)
        await self.execute(request, ctx, deadline)

    async def record_plan(self, plan: list[list[str]]) -> None:
        """Write the wave plan to the ledger before the first mutation.

        The worked upgrade of docs/versioning.md: this step is new (an activity no earlier history
        has at this point), so it runs behind ``workflow.patched``; histories recorded before it
        take the old path and still replay. Once no change started before it runs any more, this
        becomes ``workflow.deprecate_patch(PLAN_PATCH)`` (tests/replay/upgrade/workflows.py shows
        that step).
        """
        if not workflow.patched(PLAN_PATCH):
            return
        rollout = self._change.request.rollout
        sizes = [len(ids) for ids in plan]
        await self._change.audit(
            AuditAction.PLAN,
            "changeguard",
            reason=f"{len(plan)} wave(s) of {', '.join(map(str, sizes))} target(s)",
            detail={
                "waves": sizes,
                "first_targets": [ids[:5] for ids in plan][:20],
                "bake": rollout.bake.total_seconds(),
                "max_parallel": rollout.max_parallel,
            },
        )
