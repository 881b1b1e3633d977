"""The bake: observe health signals after each wave and answer them as the policy says.

A mixin of :class:`~workflows.guarded_change.GuardedChangeWorkflow` (deterministic workflow code):
it reads and writes the workflow's status, waits through the workflow's interruptible ``_wait``,
and stops the rollout by raising the workflow's unwind exception. The decision itself is the pure
:func:`workflows.responses.decide`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows import calls, observe
    from workflows.models import (
        ChangeContext,
        ChangeRequest,
        ChangeStatus,
        Outcome,
        Phase,
        ResolvePolicyInput,
        WaveProgress,
    )
    from workflows.responses import DEFAULTS, Response, decide
    from workflows.rollout_models import (
        ObserveInput,
        ObserveResult,
        PageInput,
        ResponseRule,
        RolloutPolicy,
        SignalState,
    )
    from workflows.saga import failure_of
    from workflows.summaries import clock, line

if TYPE_CHECKING:
    from workflows.guarded_change import _Unwind


class BakeMixin:
    """Bake, observe, pause-and-page and page; state lives on the workflow instance."""

    _change_id: str
    _request: ChangeRequest
    _status: ChangeStatus
    _resumed: bool
    _rollout: RolloutPolicy | None
    _pages_sent: int

    def _set_phase(self, phase: Phase, message: str, *, awaiting: list[str] | None = None) -> None:
        raise NotImplementedError

    async def _wait(
        self, condition: Callable[[], bool], limit: timedelta | None, *, summary: str | None = None
    ) -> bool:
        raise NotImplementedError

    def _unwind_with(self, outcome: Outcome, message: str) -> _Unwind:
        raise NotImplementedError

    async def _bake(self, request: ChangeRequest, wave: WaveProgress) -> None:
        """Observe the health signals for the bake time and answer each as the policy says."""
        self._rollout = None  # each wave's bake answers by the bundle the worker holds now
        rollout = await self._rollout_policy()
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
            self._set_phase(Phase.BAKING, f"{label} until {end.isoformat(timespec='seconds')}")
            response = decide([], [])
            if rollout.signals:
                with observe.span("bake.poll", observe.bake_attributes(wave, rollout)) as polled:
                    observed = await self._observe(request, wave, rollout, previous)
                    observe.set_attributes(polled, observe.readings_attributes(observed))
                previous = observed.states()
                self._status.signals = observed.readings
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
                    self._set_phase(Phase.BAKING, f"{label}: waiting, {response.why()}")
                    end = max(end, now + poll)
            else:
                waiting_since = None
            if action == "rollback":
                raise self._unwind_with(Outcome.ROLLED_BACK, f"rolled back: {response.why()}")
            if action == "pause_and_page":
                await self._pause_and_page(request, response.rule, response.why())
                if response.reading is not None:
                    acknowledged.add((response.reading.signal, str(response.reading.state)))
                end = max(end, workflow.now() + poll)
                continue
            if action == "proceed" and now >= end:
                return
            await self._wait(
                lambda: False,
                min(poll, max(end - now, timedelta(seconds=1))),
                summary=f"bake wave {wave.index + 1} until {clock(end)}",
            )

    async def _rollout_policy(self) -> RolloutPolicy:
        if self._rollout is None:
            self._rollout = await calls.resolve_rollout(
                ResolvePolicyInput(
                    change=ChangeContext.of(self._request, self._change_id),
                    policy=self._request.policy,
                )
            )
        return self._rollout

    async def _observe(
        self,
        request: ChangeRequest,
        wave: WaveProgress,
        rollout: RolloutPolicy,
        previous: dict[str, SignalState],
    ) -> ObserveResult:
        return await calls.observe_signals(
            ObserveInput(
                change_id=self._change_id,
                kind=request.kind,
                params=request.params,
                targets=list(self._status.applied),
                environment=request.environment,
                signals=rollout.signals,
                previous=previous,
            ),
            summary=line(f"observe {len(rollout.signals)} signal(s), wave {wave.index + 1}"),
        )

    async def _pause_and_page(self, request: ChangeRequest, rule: ResponseRule, why: str) -> None:
        """Page the owner, wait for resume or rollback, and apply ``then`` on timeout."""
        timeout = rule.timeout or timedelta(minutes=30)
        self._resumed = False
        await self._page(f"{self._change_id} paused: {why}", within=timeout)
        self._set_phase(
            Phase.PAUSED,
            f"paused: {why}; paged {request.team}; resume or rollback within {timeout}",
        )
        if await self._wait(
            lambda: self._resumed, timeout, summary=f"wait for resume or rollback ({timeout})"
        ):
            self._resumed = False
            return
        then = rule.then or "rollback"
        if then == "rollback":
            raise self._unwind_with(
                Outcome.ROLLED_BACK, f"rolled back: nobody answered the page; {why}"
            )
        # "proceed" or "wait" after an unanswered page: carry on baking

    async def _page(self, summary: str, *, within: timedelta = timedelta(minutes=5)) -> None:
        """Page the change's team through the policy's pager; a failed page is recorded, not fatal."""
        rollout = await self._rollout_policy()
        request = self._request
        page = PageInput(
            pager=rollout.pager,
            change_id=self._change_id,
            owner=request.team,
            severity="critical",
            summary=summary,
            details={"requester": request.requester, "applied": len(self._status.applied)},
            dedup_key=f"{self._change_id}:page:{self._pages_sent}",
        )
        try:
            await calls.page(
                page, within=within, summary=line(f"page {request.team} via {rollout.pager}")
            )
            self._status.pages.append(f"{rollout.pager}: {summary}")
        except ActivityError as exc:
            message, _ = failure_of(exc)
            self._status.pages.append(f"{rollout.pager} FAILED ({message}): {summary}")
        self._pages_sent += 1
        del self._status.pages[:-50]  # the status stays small (I10)
