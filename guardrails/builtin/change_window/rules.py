"""The text forms of weekly windows and freezes, and the spans they cover.

Windows are wall-clock times: ``"Mon-Thu 09:00-16:00"`` means 09:00 local in winter and summer.
A window may cross midnight (``"Fri 22:00-06:00"`` runs to Saturday 06:00) and the week
(``"Sun 22:00-Mon 06:00"``, ``"Fri 22:00 - Mon 06:00"``). Freezes are inclusive local dates
(``"2026-12-20/2027-01-04"``) or local times with an exclusive end
(``"2026-12-24T12:00/2026-12-27T08:00"``).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from pydantic_core import PydanticCustomError

from workflows.spans import Span, wall_to_utc

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NAMES = {name: i for names in (DAYS, _FULL_DAYS) for i, name in enumerate(names)}
_WINDOW = re.compile(
    r"^(?P<days>[A-Za-z,\- ]+?)\s+(?P<start>\d\d:\d\d)\s*-\s*"
    r"(?:(?P<end_day>[A-Za-z]+)\s+)?(?P<end>\d\d:\d\d)$"
)
_DAY_MINUTES = 24 * 60


def invalid(message: str) -> PydanticCustomError:
    """A params error whose message is taken literally (braces in user input are no template)."""
    return PydanticCustomError("change_window", "{message}", {"message": message})


@dataclass(frozen=True)
class Window:
    """A weekly allowed window: start days (0 = Monday), a local start minute and a length.

    ``end`` is the end minute counted from the start day's midnight, so it may pass 24:00 (a
    window across midnight) or several days (across the week).
    """

    text: str
    days: frozenset[int]
    start: int
    end: int

    def spans(self, zone: ZoneInfo, first: date, last: date, *, what: str = "") -> list[Span]:
        """The window's occurrences starting on local days ``first`` … ``last``, as UTC spans.

        Laid out once per (window, zone, days, label) and kept (:func:`_window_spans`): every gate's
        check and every wave's timing check of a change asks for the same 400 days, and each day is a
        daylight-saving conversion (14 ms a call for an always-open window; bench/README.md, "Scale").
        """
        return list(_window_spans(self, zone, first, last, what))


@functools.lru_cache(maxsize=256)
def _window_spans(
    window: Window, zone: ZoneInfo, first: date, last: date, what: str
) -> tuple[Span, ...]:
    found: list[Span] = []
    for offset in range((last - first).days + 1):
        day = first + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        midnight = datetime.combine(day, time())
        wall = (
            midnight + timedelta(minutes=window.start),
            midnight + timedelta(minutes=window.end),
        )
        found += [
            Span(s, e, what or window.text, "policy", zone.key) for s, e in wall_to_utc(zone, *wall)
        ]
    return tuple(found)


@dataclass(frozen=True)
class Freeze:
    """A freeze: local wall-clock ``[start, end)`` (a date range ends at the midnight after it)."""

    text: str
    start: datetime
    end: datetime

    def spans(self, zone: ZoneInfo, *, what: str = "") -> list[Span]:
        """The freeze as UTC spans (one, or two around a repeated wall-clock hour)."""
        return [
            Span(s, e, what or self.text, "policy", zone.key)
            for s, e in wall_to_utc(zone, self.start, self.end)
        ]


def _minutes(text: str, entry: str) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise invalid(f"{entry!r}: {text} is not a time between 00:00 and 24:00")
    return hours * 60 + minutes


def _day(text: str, entry: str) -> int:
    key = text.strip().lower()
    if key not in _DAY_NAMES:
        raise invalid(
            f"{entry!r}: {text.strip()!r} is not a day; use Mon, Tue, Wed, Thu, Fri, Sat, Sun"
        )
    return _DAY_NAMES[key]


def parse_window(text: str) -> Window:
    """Parse a weekly window.

    Forms: ``"Mon-Thu 09:00-16:00"``, ``"Mon,Wed 10:00-11:00"``, ``"Sat-Sun 00:00-24:00"``; day
    ranges may wrap (``Fri-Mon``). An end at or before the start crosses midnight
    (``"Fri 22:00-06:00"`` ends Saturday 06:00); an end day crosses days or the week
    (``"Sun 22:00-Mon 06:00"``, ``"Fri 22:00 - Mon 06:00"``, one start day only).

    Raises:
        PydanticCustomError: the text is not a window; the message quotes it.

    """
    entry = " ".join(text.split())
    m = _WINDOW.match(entry)
    if not m:
        raise invalid(
            f"{text!r} is not a window; write days and a local time range, "
            "e.g. 'Mon-Thu 09:00-16:00', 'Fri 22:00-06:00' or 'Fri 22:00-Mon 06:00'"
        )
    days: set[int] = set()
    for part in m["days"].split(","):
        if "-" in part:
            first_text, _, last_text = part.partition("-")
            first, last = _day(first_text, entry), _day(last_text, entry)
            days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
        else:
            days.add(_day(part, entry))
    start, end = _minutes(m["start"], entry), _minutes(m["end"], entry)
    if m["end_day"] is not None:
        if len(days) != 1:
            raise invalid(f"{entry!r}: a window that ends on a named day starts on one day only")
        (start_day,) = days
        end += ((_day(m["end_day"], entry) - start_day) % 7) * _DAY_MINUTES
        if end <= start:
            raise invalid(f"{entry!r}: the window must end after it starts")
    elif end == start:
        raise invalid(
            f"{entry!r}: the window is empty; for a whole day write e.g. 'Mon 00:00-24:00'"
        )
    elif end < start:
        end += _DAY_MINUTES  # across midnight: until the next day's end time
    return Window(text=entry, days=frozenset(days), start=start, end=end)


def _moment(text: str, *, end: bool) -> tuple[datetime, bool]:
    """A local date (its midnight, or the next one for an inclusive end) or a local time."""
    text = text.strip()
    if len(text) == 10:
        day = date.fromisoformat(text)
        return datetime.combine(day + timedelta(days=1 if end else 0), time()), False
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        raise ValueError("write local times without an offset; the rule's time zone applies")
    return moment, True


def parse_freeze(text: str) -> Freeze:
    """Parse a freeze.

    Forms: a date ``"2026-12-25"``, an inclusive date range ``"2026-12-20/2027-01-04"``, or local
    times ``"2026-12-24T12:00/2026-12-27T08:00"`` (the end is exclusive; a date and a time may be
    mixed: ``"2026-12-24T12:00/2026-12-26"`` runs to the end of the 26th).

    Raises:
        PydanticCustomError: the text is not a freeze; the message quotes it.

    """
    entry = text.strip()
    first_text, _, last_text = entry.partition("/")
    try:
        start, timed = _moment(first_text, end=False)
        if last_text:
            end, _ = _moment(last_text, end=True)
        elif timed:
            raise ValueError("a freeze that starts at a time needs an end")
        else:
            end, _ = _moment(first_text, end=True)
    except ValueError:
        raise invalid(
            f"{text!r} is not a freeze; write a date '2026-12-25', an inclusive range "
            "'2026-12-20/2027-01-04' or local times '2026-12-24T12:00/2026-12-27T08:00'"
        ) from None
    if end <= start:
        raise invalid(f"{text!r}: the freeze ends before it starts")
    return Freeze(text=entry, start=start, end=end)
