"""The ``change-window`` check: read the calendars, lay out the schedule, judge ``now``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from guardrails.base import CheckContext, Guardrail
from guardrails.builtin.change_window.calendars import (
    DEFAULT_CACHE,
    CalendarCache,
    CalendarError,
    LoadedCalendar,
    calendar_name,
    event_spans,
    is_url,
    read_file,
)
from guardrails.builtin.change_window.params import CalendarEntry, ChangeWindowParams
from guardrails.builtin.change_window.schedule import SEARCH_DAYS, Schedule, build_schedule
from workflows.models import Category, CheckResult, OptOut
from workflows.spans import Span

EVIDENCE_DAYS = 28
"""How far ahead a result lists the rule's openings (for the gate's earliest-start answer)."""
EVIDENCE_OPENINGS = 32
"""The most openings a result lists."""


class ChangeWindow(Guardrail[ChangeWindowParams]):
    """Allow changes only inside allowed windows and outside freezes, calendars and holidays."""

    name = "change-window"
    category = Category.TIMING
    params_model = ChangeWindowParams
    default_owner = "release-eng"
    default_timeout = timedelta(seconds=10)
    description = "changes start only inside allowed local-time windows and outside freezes"

    async def check(self, params: ChangeWindowParams, ctx: CheckContext) -> CheckResult:
        """Pass inside a window; else wait for the next opening, or fail if it is too late.

        A calendar that cannot be read is an ``error`` (fail-closed). Without a deadline the
        check always waits (the workflow always sets one, by default 24h after the change
        starts, so in practice a far-off opening fails).
        """
        now = (ctx.now if ctx.now.tzinfo else ctx.now.replace(tzinfo=UTC)).astimezone(UTC)
        zone = params.zone
        local = now.astimezone(zone)
        evidence: dict[str, Any] = {
            "timezone": params.timezone,
            "local_time": local.isoformat(),
            "next_opening": None,
        }
        loaded, problems = await read_calendars(params, ctx, now)
        calendars = [_calendar_evidence(params, e, loaded, problems, now) for e in params.calendars]
        if calendars:
            evidence["calendars"] = calendars
        try:
            schedule = build_schedule(params, now, calendars=loaded) if not problems else None
        except CalendarError as exc:
            problems[exc.source] = exc.detail
            schedule = None
        if schedule is None:
            problems |= _unexpandable(params, loaded, problems, now)
            calendars = [
                _calendar_evidence(params, e, loaded, problems, now) for e in params.calendars
            ]
            evidence["calendars"] = calendars
            return _unreadable(params, ctx, problems, evidence)

        window, freeze = schedule.window_at(now), schedule.freeze_at(now)
        evidence |= {
            "window": window.as_evidence() if window else None,
            "freeze": freeze.as_evidence() if freeze else None,
        }
        if schedule.is_open(now):
            evidence["opening_end"] = _iso(schedule.opening_end(now))
            evidence |= _openings(schedule, now)
            return ctx.passed(
                f"{local:%a %H:%M} {params.timezone} is inside the allowed window "
                f"{_label(window, params)}"
                if window is not None
                else f"{local:%Y-%m-%d} {params.timezone} is not frozen and no windows restrict it",
                evidence=evidence,
            )

        allowed = ", ".join(_allowed(params, loaded))
        if freeze is not None and window is None and params.restricted:
            reason = (
                f"{local:%a %Y-%m-%d %H:%M} {params.timezone} is inside the freeze "
                f"{_label(freeze, params)} and outside the allowed windows {allowed}"
            )
        elif freeze is not None:
            reason = (
                f"{local:%Y-%m-%d %H:%M} {params.timezone} is inside the freeze "
                f"{_label(freeze, params)}"
            )
        else:
            reason = f"{local:%a %H:%M} {params.timezone} is outside the allowed windows {allowed}"

        approval = _approval_hint(ctx)
        opening = schedule.next_opening(now)
        evidence |= _openings(schedule, now)
        if opening is None:
            return ctx.failed(
                f"{reason}, and there is no opening in the next {SEARCH_DAYS} days",
                remedy=(
                    f"ask {ctx.spec.owner} to fix the windows and freezes of {ctx.spec.guardrail} "
                    f"in the policy{approval}"
                ),
                evidence=evidence,
            )
        evidence["next_opening"] = opening.start.isoformat()
        opens_in = schedule.window_at(opening.start)
        evidence["next_window"] = opens_in.as_evidence() if opens_in else None
        when = local_label(opening.start, zone, params.timezone)
        deadline = ctx.change.deadline
        if deadline is None or opening.start < deadline:
            return ctx.wait(
                reason,
                remedy=(
                    f"wait for the next opening at {when}, "
                    f"when the change retries by itself{approval}"
                ),
                retry_after=opening.start,
                evidence=evidence,
            )
        return ctx.failed(
            f"{reason}; the next opening at {when} is after the deadline "
            f"{deadline.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
            remedy=f"wait for the next opening at {when}, or set a deadline after it{approval}",
            evidence=evidence,
        )


async def read_calendars(
    params: ChangeWindowParams, ctx: CheckContext, now: datetime
) -> tuple[dict[str, LoadedCalendar], dict[str, str]]:
    """Read every calendar at once; return the ones read and, by source, why others were not.

    The check and the rollout's wave timing (:mod:`.fit`) both read calendars this way.
    """
    cache: CalendarCache = (
        DEFAULT_CACHE if ctx.services.calendar_cache is None else ctx.services.calendar_cache
    )
    sources = list(dict.fromkeys(e.calendar for e in params.calendars))

    async def read(source: str) -> LoadedCalendar:
        if is_url(source):
            return await cache.fetch(
                source,
                now=now,
                ttl=params.calendar_ttl,
                time_limit=params.calendar_timeout,
                max_bytes=params.calendar_max_bytes,
            )
        if ctx.spec.source == "request":
            # A request's additions never make the worker read its files (docs/design.md).
            raise CalendarError(source, "a rule added by a request may only name http(s) URLs")
        return await read_file(source, max_bytes=params.calendar_max_bytes)

    results = await asyncio.gather(*(read(s) for s in sources), return_exceptions=True)
    loaded: dict[str, LoadedCalendar] = {}
    problems: dict[str, str] = {}
    for source, result in zip(sources, results, strict=True):
        if isinstance(result, CalendarError):
            problems[source] = result.detail
        elif isinstance(result, BaseException):
            problems[source] = f"{type(result).__name__}: {result}"
        else:
            loaded[source] = result
    return loaded, problems


def _unexpandable(
    params: ChangeWindowParams,
    loaded: dict[str, LoadedCalendar],
    problems: dict[str, str],
    now: datetime,
) -> dict[str, str]:
    """Why calendars that were read cannot be expanded (so that one error names them all)."""
    found = {}
    for entry in params.calendars:
        if entry.calendar in problems or entry.calendar not in loaded:
            continue
        try:
            event_spans(
                loaded[entry.calendar],
                params.zone_of(entry.timezone),
                now,
                now + timedelta(days=SEARCH_DAYS),
                source="",
            )
        except CalendarError as exc:
            found[entry.calendar] = exc.detail
    return found


def _display_name(entry: CalendarEntry, loaded: dict[str, LoadedCalendar]) -> str:
    found = loaded.get(entry.calendar)
    if entry.name or found is None:
        return entry.name or entry.calendar
    return calendar_name(found.calendar, entry.calendar)


def _calendar_evidence(
    params: ChangeWindowParams,
    entry: CalendarEntry,
    loaded: dict[str, LoadedCalendar],
    problems: dict[str, str],
    now: datetime,
) -> dict[str, Any]:
    kind = "allow" if entry in params.allow_calendars else "freeze"
    name = _display_name(entry, loaded)
    found = loaded.get(entry.calendar)
    shown = found.evidence(name, now) if found else {"name": name, "source": entry.calendar}
    if entry.calendar in problems:
        shown["error"] = problems[entry.calendar]
    return {"kind": kind, **shown}


def _unreadable(
    params: ChangeWindowParams,
    ctx: CheckContext,
    problems: dict[str, str],
    evidence: dict[str, Any],
) -> CheckResult:
    names = {e.calendar: e.name for e in params.calendars}
    what = "; ".join(
        f"calendar {(names.get(source) or source)!r}"
        + (f" ({source})" if names.get(source) else "")
        + f" cannot be read: {detail}"
        for source, detail in problems.items()
    )
    rule = ctx.spec.rule or ctx.spec.guardrail
    sources = ", ".join(problems)
    return ctx.error(
        f"{what}; rule {rule} (owner {ctx.spec.owner}) stays closed until it can be read",
        remedy=(
            f"ask {ctx.spec.owner} to make {sources} readable from the worker as an iCalendar "
            f"file (.ics), or to remove it from rule {rule}"
        ),
        evidence=evidence,
    )


def _label(span: Span | None, params: ChangeWindowParams) -> str:
    if span is None:
        return ""
    if span.source == "policy" and span.timezone and span.timezone != params.timezone:
        return f"{span.what} ({span.timezone})"
    return span.label


def _allowed(params: ChangeWindowParams, loaded: dict[str, LoadedCalendar]) -> list[str]:
    texts = [
        f"{w.window} ({w.timezone})" if w.timezone and w.timezone != params.timezone else w.window
        for w in params.allow
    ]
    return texts + [f"calendar {_display_name(e, loaded)!r}" for e in params.allow_calendars]


def _openings(schedule: Schedule, now: datetime) -> dict[str, Any]:
    """The rule's openings for the next :data:`EVIDENCE_DAYS` days, and until when that is all."""
    horizon = now + timedelta(days=EVIDENCE_DAYS)
    listed = [o for o in schedule.openings if o.start < horizon][:EVIDENCE_OPENINGS]
    until = horizon
    if len(listed) == EVIDENCE_OPENINGS:
        last = listed[-1]
        until = min(horizon, last.end or horizon)
    return {
        "openings": [o.as_evidence() for o in listed],
        "openings_until": until.isoformat(),
    }


def _iso(instant: datetime | None) -> str | None:
    return instant.isoformat() if instant else None


def local_label(instant: datetime, zone: ZoneInfo, name: str) -> str:
    """``2026-05-04 09:00 Europe/Berlin (07:00 UTC)``; ``2026-05-04 07:00 UTC`` in UTC."""
    local = instant.astimezone(zone)
    utc = instant.astimezone(UTC)
    if local.utcoffset() == utc.utcoffset() and name.upper() in ("UTC", "ETC/UTC", "Z"):
        return f"{utc:%Y-%m-%d %H:%M} UTC"
    utc_text = utc.strftime("%H:%M" if utc.date() == local.date() else "%Y-%m-%d %H:%M")
    return f"{local:%Y-%m-%d %H:%M} {name} ({utc_text} UTC)"


def _approval_hint(ctx: CheckContext) -> str:
    rule = ctx.spec.opt_out_rule
    if rule is None or ctx.spec.opt_out is not OptOut.APPROVABLE:
        return ""
    who = " or ".join(rule.approvers)
    what = "an approval" if rule.required == 1 else f"{rule.required} approvals"
    return f", or ask {who} for {what}"
