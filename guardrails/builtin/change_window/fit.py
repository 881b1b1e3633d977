"""Does a wave fit? One ``change-window`` rule's answer for a wave and its bake.

The rollout asks before each wave: from ``now``, does the rule stay open for the wave's bake plus
the rule's ``wave_allowance`` (the time its mutations may take)? If not, when is the first start
from which it does? The calendars are read as the check reads them (fail-closed: a calendar that
cannot be read makes the rule not fit, with no opening known).
"""

from __future__ import annotations

from datetime import UTC, timedelta

from guardrails.base import CheckContext
from guardrails.builtin.change_window.calendars import CalendarError
from guardrails.builtin.change_window.guardrail import local_label, read_calendars
from guardrails.builtin.change_window.params import ChangeWindowParams
from guardrails.builtin.change_window.schedule import SEARCH_DAYS, build_schedule
from workflows.spans import Opening
from workflows.timing_models import RuleTiming
from workflows.types import format_duration


async def wave_fit(
    params: ChangeWindowParams, ctx: CheckContext, bake: timedelta
) -> tuple[RuleTiming, list[Opening] | None]:
    """The rule's answer for a wave starting at ``ctx.now``, and its openings (None: unknown).

    Args:
        params: the rule's params.
        ctx: the change, the rule's spec, the wave's start (``now``) and the worker's services.
        bake: the wave's bake; the wave needs ``bake + params.wave_allowance``.

    """
    now = ctx.now.astimezone(UTC)
    needed = bake + params.wave_allowance
    rule = ctx.spec.rule or ctx.spec.guardrail
    answer = RuleTiming(
        rule=rule,
        owner=ctx.spec.owner,
        timezone=params.timezone,
        needed=needed,
        mid_rollout=params.mid_rollout,
    )
    loaded, problems = await read_calendars(params, ctx, now)
    schedule = None
    if not problems:
        try:
            schedule = build_schedule(params, now, calendars=loaded)
        except CalendarError as exc:
            problems[exc.source] = exc.detail
    if schedule is None:
        what = "; ".join(f"calendar {s} cannot be read: {d}" for s, d in problems.items())
        error = f"{what}; rule {rule} (owner {ctx.spec.owner}) stays closed until it can be read"
        return answer.model_copy(update={"open_now": False, "fits": False, "error": error}), None

    zone, name = params.zone, params.timezone
    open_now = schedule.is_open(now)
    closes = schedule.opening_end(now) if open_now else now
    fits = open_now and (closes is None or closes >= now + needed)
    found = schedule.next_opening(now, needed)
    span = f"the wave and its bake ({format_duration(needed)})"
    if fits:
        until = f"until {local_label(closes, zone, name)}" if closes else "with no close in sight"
        reason = f"open {until}: {span} fit"
    elif open_now and closes is not None:
        freeze = schedule.freeze_at(closes)
        at = local_label(closes, zone, name)
        reason = (
            f"{span} would end inside the freeze {freeze.label} that begins {at}"
            if freeze is not None
            else f"{span} would end after the allowed window closes at {at}"
        )
    else:
        freeze = schedule.freeze_at(now)
        reason = (
            f"the freeze {freeze.label} is in force"
            if freeze is not None
            else "it is outside the allowed windows"
        )
    if not fits:
        reason += (
            f"; the first start with {format_duration(needed)} open is "
            f"{local_label(found.start, zone, name)}"
            if found is not None
            else f"; no opening lasts {format_duration(needed)} in the next {SEARCH_DAYS} days"
        )
    timing = answer.model_copy(
        update={
            "open_now": open_now,
            "closes_at": closes if open_now else None,
            "fits": fits,
            "next_fit": None if fits else (found.start if found else None),
            "reason": reason,
        }
    )
    return timing, schedule.openings
