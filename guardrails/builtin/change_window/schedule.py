"""A rule's schedule: its allow and freeze spans over a horizon, and the openings they leave.

This is the pure answer to "when may a change start under this rule": given the params and the
calendars already read (the check activity reads them), :func:`build_schedule` lays every window,
freeze, calendar event and holiday out as UTC spans, and the openings are the allowed time minus
the frozen time. :func:`next_opening` and :func:`opening_end` are the questions a rollout asks
before a wave (is there time for the wave and its bake before the rule closes?).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from guardrails.builtin.change_window.calendars import (
    CalendarError,
    LoadedCalendar,
    calendar_name,
    event_spans,
    holiday_spans,
)
from guardrails.builtin.change_window.params import CalendarEntry, ChangeWindowParams
from workflows.spans import Opening, Span, first_opening, subtract, union

SEARCH_DAYS = 400
"""How far ahead openings are searched for before the policy is declared unsatisfiable."""

_MARGIN = timedelta(days=8)
"""How far back spans are laid out, so that one begun earlier (a week-long window) is seen."""


@dataclass(frozen=True)
class Schedule:
    """A rule's spans and openings over ``[start, end)``; openings reaching ``end`` are open-ended."""

    start: datetime
    end: datetime
    restricted: bool
    allows: list[Span]
    freezes: list[Span]
    openings: list[Opening] = field(default_factory=list)

    def window_at(self, instant: datetime) -> Span | None:
        """The allowed window (or event) an instant is in; None outside all, or when unrestricted."""
        return next((s for s in self.allows if s.contains(instant)), None)

    def freeze_at(self, instant: datetime) -> Span | None:
        """The freeze (policy, calendar event or holiday) an instant is in, if any."""
        return next((s for s in self.freezes if s.contains(instant)), None)

    def is_open(self, instant: datetime) -> bool:
        """Whether a change may start at an instant."""
        return any(_inside(o, instant) for o in self.openings)

    def next_opening(self, after: datetime, min_length: timedelta = timedelta(0)) -> Opening | None:
        """The first opening at or after ``after`` that lasts at least ``min_length``.

        Its ``start`` is ``after`` itself when the rule is open then; None when there is none
        within the horizon.
        """
        return first_opening(self.openings, after.astimezone(UTC), min_length)

    def opening_end(self, at: datetime) -> datetime | None:
        """When the opening that contains ``at`` closes.

        ``at`` itself when the rule is closed then; None when it stays open to the horizon's end.
        """
        at = at.astimezone(UTC)
        current = next((o for o in self.openings if _inside(o, at)), None)
        if current is None:
            return at
        return current.end


def _inside(opening: Opening, instant: datetime) -> bool:
    return opening.start <= instant and (opening.end is None or instant < opening.end)


def build_schedule(
    params: ChangeWindowParams,
    after: datetime,
    *,
    calendars: Mapping[str, LoadedCalendar] | None = None,
    days: int = SEARCH_DAYS,
) -> Schedule:
    """Lay a rule out as spans from ``after`` for ``days`` days.

    Args:
        params: the rule's params.
        after: the horizon's start (aware).
        calendars: every calendar the params name, by source, as the check activity read them.
        days: the horizon's length.

    Raises:
        CalendarError: a calendar the params name is not in ``calendars``, or cannot be expanded.

    """
    start = after.astimezone(UTC)
    end = start + timedelta(days=days)
    low = start - _MARGIN
    allows: list[Span] = []
    for window, zone, name in params.windows:
        first = low.astimezone(zone).date()
        last = end.astimezone(zone).date()
        allows += window.spans(zone, first, last, what=name)
    freezes: list[Span] = []
    for freeze, zone, name in params.freezes:
        freezes += freeze.spans(zone, what=name)
    for entry in params.allow_calendars:
        allows += _calendar_spans(params, entry, calendars or {}, low, end)
    for entry in params.freeze_calendars:
        freezes += _calendar_spans(params, entry, calendars or {}, low, end)
    for holiday in params.freeze_holidays:
        zone = params.zone_of(holiday.timezone)
        freezes += holiday_spans(
            holiday.country, holiday.subdivision, zone, low, end, language=holiday.language
        )
    allows = sorted(s for s in allows if s.end > low and s.start < end)
    freezes = sorted(s for s in freezes if s.end > low and s.start < end)
    allowed = union(allows) if params.restricted else [(low, end)]
    pairs = [(max(s, start), e) for s, e in subtract(allowed, union(freezes)) if e > start]
    openings = [Opening(s, None if e >= end else e) for s, e in pairs if s < end]
    return Schedule(start, end, params.restricted, allows, freezes, openings)


def _calendar_spans(
    params: ChangeWindowParams,
    entry: CalendarEntry,
    calendars: Mapping[str, LoadedCalendar],
    start: datetime,
    end: datetime,
) -> list[Span]:
    loaded = calendars.get(entry.calendar)
    if loaded is None:
        raise CalendarError(entry.calendar, "it was not read (pass it in calendars=)")
    name = entry.name or calendar_name(loaded.calendar, entry.calendar)
    zone = params.zone_of(entry.timezone)
    return event_spans(loaded, zone, start, end, source=f"calendar {name}")


def next_opening(
    params: ChangeWindowParams,
    after: datetime,
    min_length: timedelta = timedelta(0),
    *,
    calendars: Mapping[str, LoadedCalendar] | None = None,
) -> Opening | None:
    """The first instant at or after ``after`` from which the rule stays open ``min_length``.

    Pure: calendars are passed in already read. ``Opening.end`` is when that opening closes (None
    if not within :data:`SEARCH_DAYS`); the result is None when no opening lasts long enough.

    Raises:
        CalendarError: see :func:`build_schedule`.

    """
    return build_schedule(params, after, calendars=calendars).next_opening(after, min_length)


def opening_end(
    params: ChangeWindowParams,
    at: datetime,
    *,
    calendars: Mapping[str, LoadedCalendar] | None = None,
) -> datetime | None:
    """When the rule's opening that contains ``at`` closes.

    ``at`` itself when the rule is closed at ``at`` (no time left), None when it stays open for
    all of :data:`SEARCH_DAYS`. A wave of length D fits when the result is None or ``>= at + D``.

    Raises:
        CalendarError: see :func:`build_schedule`.

    """
    return build_schedule(params, at, calendars=calendars).opening_end(at)
