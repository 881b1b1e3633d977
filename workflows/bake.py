"""The bake: observe health signals after each wave and answer them as the policy says.

Deterministic workflow code, composed into ``GuardedChange``: a :class:`BakeMonitor` receives the
change's :class:`~workflows.change_run.ChangeRun` (status, interruptible wait, the operator's
resume) and its :class:`~workflows.paging.Pager`, and stops the rollout by raising
:class:`~workflows.unwind.Unwind`. The decision itself is the pure :func:`workflows.responses.decide`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    import workflows.observe as observe
    from workflows.change_run import ChangeRun
    from workflows.models import ChangeRequest, Outcome, Phase, WaveProgress
    from workflows.paging import Pager
    from workflows.responses import DEFAULTS, Response, decide
    from workflows.rollout_models import (
        ObserveInput,
        ObserveResult,
        ResponseRule,
        RolloutPolicy,
        SignalState,
    )
    from workflows.summaries import clock, line
    from workflows.unwind import Unwind


class BakeMonitor:
    """Bake a wave: observe, wait, pause-and-page or roll back, as the rollout policy says."""

    def __init__(self, change: ChangeRun, pager: Pager) -> None:
        self._change = change
        self._pager = pager

    async def bake(self, request: ChangeRequest, wave: WaveProgress) -> None:
        """Observe the health signals for the bake time and answer each as the policy says."""
        change = self._change
        self._pager.refresh()  # each wave's bake answers by the bundle the worker holds now
        rollout = await self._pager.policy()
        bake = request.rollout.bake
        if bake <= timedelta(0) and not rollout.signals:
            return
        wave.state = "baking"
        started = workflow.now()
        end = started + bake
        poll = min(max(bake / 5, timedelta(seconds=1)), timedelta(seconds=60))
        waiting_since: datetime | None = None
        previous: dict[str, SignalState] = {}
        acknowledged: set[tuple[str, str]] = set()  # resumed past: not paged again this bake
        while True:
            label = f"baking wave {wave.index + 1}"
            change.set_phase(Phase.BAKING, f"{label} until {end.isoformat(timespec='seconds')}")
            response = decide([], [])
            if rollout.signals:
                with observe.span("bake.poll", observe.bake_attributes(wave, rollout)) as polled:
                    observed = await self._observe(request, wave, rollout, previous)
                    observe.set_attributes(polled, observe.readings_attributes(observed))
                previous = observed.states()
                change.status.signals = observed.readings
                heeded = [
                    r for r in observed.readings if (r.signal, str(r.state)) not in acknowledged
                ]
                response = decide(heeded, rollout.responses)
            now = workflow.now()
            action = response.action
            if action == "wait":
                waiting_since = waiting_since or now
                bound = response.rule.max or bake
                if now - waiting_since >= bound:
                    action = response.rule.then or "pause_and_page"
                    if action == "pause_and_page":
                        # The escalation pauses on the default pause terms (timeout, then
                        # rollback), not on the wait rule's.
                        response = Response(
                            DEFAULTS["degraded"].model_copy(
                                update={
                                    "signal": response.rule.signal,
                                    "state": response.rule.state,
                                }
                            ),
                            response.reading,
                        )
                else:
                    change.set_phase(Phase.BAKING, f"{label}: waiting, {response.why()}")
                    end = max(end, now + poll)
            else:
                waiting_since = None
            if action == "rollback":
                raise Unwind(Outcome.ROLLED_BACK, f"rolled back: {response.why()}")
            if action == "pause_and_page":
                await self._pause_and_page(request, response.rule, response.why())
                if response.reading is not None:
                    acknowledged.add((response.reading.signal, str(response.reading.state)))
                end = max(end, workflow.now() + poll)
                continue
            if action == "proceed" and now >= end:
                return
            await change.wait(
                lambda: False,
                min(poll, max(end - now, timedelta(seconds=1))),
                summary=f"bake wave {wave.index + 1} until {clock(end)}",
            )

    async def _observe(
        self,
        request: ChangeRequest,
        wave: WaveProgress,
        rollout: RolloutPolicy,
        previous: dict[str, SignalState],
    ) -> ObserveResult:
        return await calls.observe_signals(
            ObserveInput(
                change_id=self._change.change_id,
                kind=request.kind,
                params=request.params,
                targets=list(self._change.status.applied),
                environment=request.environment,
                signals=rollout.signals,
                previous=previous,
            ),
            summary=line(f"observe {len(rollout.signals)} signal(s), wave {wave.index + 1}"),
        )

    async def _pause_and_page(self, request: ChangeRequest, rule: ResponseRule, why: str) -> None:
        """Page the owner, wait for resume or rollback, and apply ``then`` on timeout."""
        change = self._change
        timeout = rule.timeout or timedelta(minutes=30)
        change.resumed = False
        await self._pager.page(f"{change.change_id} paused: {why}", within=timeout)
        change.set_phase(
            Phase.PAUSED,
            f"paused: {why}; paged {request.team}; resume or rollback within {timeout}",
        )
        if await change.wait(
            lambda: change.resumed, timeout, summary=f"wait for resume or rollback ({timeout})"
        ):
            change.resumed = False
            return
        then = rule.then or "rollback"
        if then == "rollback":
            raise Unwind(Outcome.ROLLED_BACK, f"rolled back: nobody answered the page; {why}")
        # "proceed" or "wait" after an unanswered page: carry on baking
