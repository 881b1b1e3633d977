"""Spans of UTC time and the algebra of openings: union, difference, intersection, wall clocks.

Everything here is pure (stdlib only, no I/O, no clock), so the gate workflow may use it too: an
:class:`Opening` list is what a ``change-window`` result carries in its evidence, and
:func:`intersect` / :func:`earliest_common_opening` combine the lists of several rules.

A span is half-open, ``[start, end)``, in aware UTC datetimes. An opening's ``end`` may be
``None``: it does not close within the horizon that was searched.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

FOREVER = datetime.max.replace(tzinfo=UTC)
"""Stands for an open end (``None``) inside the algebra."""


@dataclass(frozen=True, order=True)
class Span:
    """A labelled ``[start, end)`` of UTC time: a window or freeze occurrence and where it came from.

    ``what`` is the window text, event summary or holiday name; ``source`` is ``policy``,
    ``calendar <name>`` or ``holidays <country>[-<subdivision>]``.
    """

    start: datetime
    end: datetime
    what: str = field(default="", compare=False)
    source: str = field(default="policy", compare=False)
    timezone: str = field(default="", compare=False)

    def contains(self, instant: datetime) -> bool:
        """Whether an instant is inside the span."""
        return self.start <= instant < self.end

    @property
    def label(self) -> str:
        """How a reason names it: ``Mon-Thu 09:00-16:00`` or ``'Labour Day' (holidays DE-BE)``."""
        if self.source == "policy":
            return self.what
        return f"{self.what!r} ({self.source})"

    def as_evidence(self) -> dict[str, str]:
        """The span as JSON-friendly evidence."""
        found = {"what": self.what, "source": self.source}
        if self.timezone:
            found["timezone"] = self.timezone
        return found | {"start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class Opening:
    """A stretch of time in which a rule lets a change start; ``end`` None: no close in sight."""

    start: datetime
    end: datetime | None

    def lasts(self, at_least: timedelta) -> bool:
        """Whether the opening is at least ``at_least`` long."""
        return self.end is None or self.end - self.start >= at_least

    def as_evidence(self) -> list[str | None]:
        """``[start, end]`` as ISO texts (``end`` null when open-ended)."""
        return [self.start.isoformat(), self.end.isoformat() if self.end else None]

    @classmethod
    def from_evidence(cls, pair: Sequence[str | None]) -> Opening:
        """Read back :meth:`as_evidence` (what a report stores)."""
        start, end = pair
        if start is None:
            raise ValueError("an opening needs a start")
        return cls(datetime.fromisoformat(start), datetime.fromisoformat(end) if end else None)


Pair = tuple[datetime, datetime]


def union(spans: Iterable[Span | Pair]) -> list[Pair]:
    """Merge spans into sorted, disjoint pairs; touching spans become one."""
    pairs = sorted((s.start, s.end) if isinstance(s, Span) else s for s in spans)
    merged: list[Pair] = []
    for start, end in pairs:
        if start >= end:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def subtract(keep: Sequence[Pair], remove: Sequence[Pair]) -> list[Pair]:
    """``keep`` minus ``remove``; both sorted and disjoint (as :func:`union` returns them)."""
    out: list[Pair] = []
    j = 0
    for start, end in keep:
        while j < len(remove) and remove[j][1] <= start:
            j += 1
        cursor, k = start, j
        while k < len(remove) and remove[k][0] < end:
            if remove[k][0] > cursor:
                out.append((cursor, remove[k][0]))
            cursor = max(cursor, remove[k][1])
            k += 1
        if cursor < end:
            out.append((cursor, end))
    return out


def intersect(*rules: Sequence[Opening]) -> list[Opening]:
    """The openings shared by every rule: when all of them let a change start together.

    Each argument is one rule's openings, sorted and disjoint (as a ``change-window`` result's
    ``evidence["openings"]`` lists them, read back with :meth:`Opening.from_evidence`).
    """
    if not rules:
        return []
    common = [(o.start, o.end or FOREVER) for o in rules[0]]
    for rule in rules[1:]:
        other = [(o.start, o.end or FOREVER) for o in rule]
        both: list[Pair] = []
        i = j = 0
        while i < len(common) and j < len(other):
            start, end = max(common[i][0], other[j][0]), min(common[i][1], other[j][1])
            if start < end:
                both.append((start, end))
            if common[i][1] < other[j][1]:
                i += 1
            else:
                j += 1
        common = both
    return [Opening(s, None if e == FOREVER else e) for s, e in common]


def first_opening(
    openings: Iterable[Opening], after: datetime, min_length: timedelta = timedelta(0)
) -> Opening | None:
    """The first opening (cut to start no earlier than ``after``) lasting at least ``min_length``."""
    for opening in openings:
        if opening.end is not None and opening.end <= after:
            continue
        cut = Opening(max(opening.start, after), opening.end)
        if cut.lasts(min_length):
            return cut
    return None


def earliest_common_opening(
    rules: Sequence[Sequence[Opening]], after: datetime, min_length: timedelta = timedelta(0)
) -> Opening | None:
    """The earliest instant at or after ``after`` when every rule is open for ``min_length``.

    This is the intersection's first long-enough opening, not the latest of the rules' single
    next openings: those may never overlap until a later week.
    """
    return first_opening(intersect(*rules), after, min_length)


def wall_to_utc(zone: ZoneInfo, start: datetime, end: datetime) -> list[Pair]:
    """The UTC spans of the instants whose wall-clock time in ``zone`` lies in ``[start, end)``.

    ``start`` and ``end`` are naive wall-clock times. A wall time skipped by a daylight-saving gap
    has no instant (a window starting inside the gap opens when the gap ends); a wall time repeated
    when clocks fall back has two, so a short window inside the repeated hour happens twice.
    """
    low = start.replace(tzinfo=UTC) - timedelta(days=2)
    high = end.replace(tzinfo=UTC) + timedelta(days=2)
    cuts = [low, *(t for t in _transitions_between(zone, low, high)), high]
    spans: list[Pair] = []
    for seg_start, seg_end in pairwise(cuts):
        offset = seg_start.astimezone(zone).utcoffset() or timedelta(0)
        lo = max(seg_start, start.replace(tzinfo=UTC) - offset)
        hi = min(seg_end, end.replace(tzinfo=UTC) - offset)
        if lo < hi:
            spans.append((lo, hi))
    return union(spans)


def _transitions_between(zone: ZoneInfo, low: datetime, high: datetime) -> list[datetime]:
    years = range(low.year, high.year + 1)
    key = zone.key
    return [t for year in years for t in _transitions(key, year) if low < t < high]


_PROBE = timedelta(hours=2)


@functools.lru_cache(maxsize=512)
def _transitions(key: str, year: int) -> tuple[datetime, ...]:
    """The instants in a UTC year at which the zone's offset changes (to the second).

    Probes every two hours and bisects each change; zones never change offset twice within two
    hours.
    """
    zone = ZoneInfo(key)
    found = []
    probe = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    before = probe.astimezone(zone).utcoffset()
    while probe < end:
        nxt = probe + _PROBE
        after = nxt.astimezone(zone).utcoffset()
        if after != before:
            low, high = 0, int(_PROBE.total_seconds())
            while high - low > 1:
                middle = (low + high) // 2
                if (probe + timedelta(seconds=middle)).astimezone(zone).utcoffset() == before:
                    low = middle
                else:
                    high = middle
            found.append(probe + timedelta(seconds=high))
        probe, before = nxt, after
    return tuple(found)
