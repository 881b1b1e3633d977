"""The rollout's timing activity: may the next wave start now and finish before a rule closes?

A thin entry point over :func:`guardrails.builtin.change_window.fit.wave_fit`. The timing rules
are resolved like the gate's (the platform bundle the worker holds *now*, plus the request's
additions), so a calendar edit or a new bundle that adds a freeze mid-rollout is seen before the
next wave. Only enforced ``change-window`` rules answer; other timing rules are re-checked by the
wave's re-gate as before.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

from temporalio import activity

from activities.checks import CheckActivities
from guardrails.base import CheckContext
from guardrails.builtin.change_window import ChangeWindow, earliest_common_opening
from guardrails.builtin.change_window.fit import wave_fit
from guardrails.builtin.change_window.guardrail import local_label
from workflows.models import Category, ChangeContext, Mode, ResolvePolicyInput
from workflows.spans import Opening
from workflows.timing_models import RuleTiming, WaveTimingInput, WaveTimingResult


class TimingActivities:
    """The wave-timing activity, over the gate's activities (their registry, bundle, services)."""

    def __init__(self, checks: CheckActivities) -> None:
        self.checks = checks

    @activity.defn(name="check_wave_timing")
    async def check_wave_timing(self, inp: WaveTimingInput) -> WaveTimingResult:
        """Judge ``[at, at + bake + allowance]`` against every ``change-window`` rule.

        ``earliest`` is the first start at which every rule stays open that long together (the
        intersection of their openings), None when a rule cannot be judged or none is in sight.
        """
        change = ChangeContext.model_validate(inp.change)
        at = inp.at.astimezone(UTC)
        resolved = await self.checks.resolve_policy(
            ResolvePolicyInput(change=change, policy=inp.policy, categories=[Category.TIMING])
        )
        answers: list[RuleTiming] = []
        openings: list[list[Opening] | None] = []
        for spec in resolved.checks:
            if spec.guardrail != ChangeWindow.name or spec.mode is not Mode.ENFORCE:
                continue
            if (spec.rule or spec.guardrail) in inp.approved:
                continue  # an operator approved starting outside this rule's openings
            guardrail = self.checks.guardrails.get(spec.guardrail)
            if not isinstance(guardrail, ChangeWindow):
                continue
            params = guardrail.parse_params(spec.params)
            ctx = CheckContext(change=change, spec=spec, now=at, services=self.checks.services)
            answer, found = await wave_fit(params, ctx, inp.bake)
            answers.append(answer)
            openings.append(found)
        result = WaveTimingResult(at=at, fits=all(a.fits for a in answers), rules=answers)
        if result.fits or any(o is None for o in openings):
            return result
        needed = max((a.needed for a in answers), default=timedelta(0))
        common = earliest_common_opening([o or [] for o in openings], at, needed)
        if common is not None:
            zone = answers[0].timezone  # labels are written in the first rule's zone
            result.earliest = common.start
            result.earliest_label = local_label(common.start, ZoneInfo(zone), zone)
        return result
