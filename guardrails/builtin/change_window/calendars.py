"""Calendars and public holidays as spans: iCalendar files and URLs, and the ``holidays`` package.

Reading is the check activity's job (never the workflow's): a file path is read relative to the
worker's working directory; an http(s) URL is fetched with httpx, bounded in size and time, and
kept in an in-process :class:`CalendarCache` for a TTL (revalidated with ETag / Last-Modified when
the server sends them). Whatever cannot be read or parsed raises :class:`CalendarError`, which the
check turns into an ``error`` result (fail-closed).

Events are expanded with ``recurring-ical-events`` (RRULE, RDATE, EXDATE, moved occurrences).
Times carry the calendar's own zones (VTIMEZONE / TZID); all-day and floating events are read in
the rule's time zone (or the calendar entry's ``timezone``). Cancelled events are skipped.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import httpx
import icalendar
import recurring_ical_events  # ships no py.typed marker: mypy override in pyproject.toml

from guardrails.builtin._params import excerpt
from workflows.spans import Span, wall_to_utc


class CalendarError(Exception):
    """A calendar could not be read or parsed; ``detail`` says what went wrong."""

    def __init__(self, source: str, detail: str) -> None:
        detail = excerpt(detail)  # parser messages quote the input; keep reasons short
        super().__init__(f"{source}: {detail}")
        self.source = source
        self.detail = detail


def is_url(source: str) -> bool:
    """Whether a calendar source is an http(s) URL (else it is a file path)."""
    return source.startswith(("http://", "https://"))


@dataclass(frozen=True)
class LoadedCalendar:
    """A parsed calendar and how it was obtained (what the evidence shows)."""

    source: str
    calendar: icalendar.Calendar
    fetched_at: datetime | None = None
    """When a URL's copy was fetched or last revalidated (None for a file)."""
    cached: bool = False

    def evidence(self, name: str, now: datetime) -> dict[str, Any]:
        """How this calendar was read: its name, source, and a URL copy's age in seconds."""
        found: dict[str, Any] = {"name": name, "source": self.source}
        if self.fetched_at is not None:
            found |= {
                "cached": self.cached,
                "age_s": max(0, int((now - self.fetched_at).total_seconds())),
            }
        return found


@dataclass
class _Entry:
    calendar: icalendar.Calendar
    fetched_at: datetime
    validators: dict[str, str] = field(default_factory=dict)


class CalendarCache:
    """Fetched URL calendars, kept per URL for a TTL; one per worker process by default.

    Ages are measured on the check's clock (``ctx.now``), so a cache entry is as old as the
    checks see it. A copy past its TTL is refetched; a failed refetch is an error, not a stale
    answer, because a freeze added since must not be missed.
    """

    def __init__(self, *, max_entries: int = 256) -> None:
        self._entries: dict[str, _Entry] = {}
        self._max_entries = max_entries

    def clear(self) -> None:
        """Forget every cached copy."""
        self._entries.clear()

    async def fetch(
        self,
        url: str,
        *,
        now: datetime,
        ttl: timedelta,
        time_limit: timedelta,
        max_bytes: int,
    ) -> LoadedCalendar:
        """The calendar at ``url``: the cached copy while fresh, else fetched (or revalidated).

        Raises:
            CalendarError: it cannot be fetched in time, is too large, or does not parse.

        """
        entry = self._entries.get(url)
        if entry is not None and timedelta(0) <= now - entry.fetched_at < ttl:
            return LoadedCalendar(url, entry.calendar, entry.fetched_at, cached=True)
        headers = {}
        if entry is not None:
            if "etag" in entry.validators:
                headers["If-None-Match"] = entry.validators["etag"]
            if "last-modified" in entry.validators:
                headers["If-Modified-Since"] = entry.validators["last-modified"]
        try:
            async with asyncio.timeout(time_limit.total_seconds()):
                status, body, validators = await _get(url, headers, time_limit, max_bytes)
        except TimeoutError:
            raise CalendarError(url, f"no answer within {time_limit.total_seconds():g}s") from None
        except httpx.HTTPError as exc:
            detail = str(exc).strip()
            raise CalendarError(
                url, f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            ) from None
        if status == 304 and entry is not None:
            entry.fetched_at = now
            return LoadedCalendar(url, entry.calendar, now, cached=True)
        if status != 200:
            raise CalendarError(url, f"the server answered {status}")
        calendar = parse(url, body)
        self._entries[url] = _Entry(calendar, now, validators)
        while len(self._entries) > self._max_entries:  # rules a request adds may name many URLs
            del self._entries[min(self._entries, key=lambda u: self._entries[u].fetched_at)]
        return LoadedCalendar(url, calendar, now, cached=False)


DEFAULT_CACHE = CalendarCache()
"""The worker's cache (``Services.calendar_cache`` may supply another, e.g. in tests)."""


async def _get(
    url: str, headers: dict[str, str], time_limit: timedelta, max_bytes: int
) -> tuple[int, bytes, dict[str, str]]:
    async with (
        httpx.AsyncClient(timeout=time_limit.total_seconds(), follow_redirects=True) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        if response.status_code != 200:
            return response.status_code, b"", {}
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise CalendarError(url, f"it is {declared} bytes, more than the limit of {max_bytes}")
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise CalendarError(url, f"it is larger than the limit of {max_bytes} bytes")
            chunks.append(chunk)
        validators = {
            k: response.headers[k] for k in ("etag", "last-modified") if k in response.headers
        }
        return 200, b"".join(chunks), validators


async def read_file(path: str, *, max_bytes: int) -> LoadedCalendar:
    """Read and parse a calendar file (relative paths from the worker's working directory).

    Raises:
        CalendarError: it cannot be read, is too large, or does not parse.

    """

    def read() -> bytes:
        with Path(path).open("rb") as handle:
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise CalendarError(path, f"it is larger than the limit of {max_bytes} bytes")
        return data

    try:
        data = await asyncio.to_thread(read)
    except OSError as exc:
        raise CalendarError(path, f"{type(exc).__name__}: {exc.strerror or exc}") from None
    return LoadedCalendar(path, parse(path, data))


def parse(source: str, data: bytes) -> icalendar.Calendar:
    """Parse iCalendar text.

    Raises:
        CalendarError: it is not one VCALENDAR.

    """
    try:
        calendar = icalendar.Calendar.from_ical(data)
    except Exception as exc:  # icalendar raises ValueError and others on malformed input
        raise CalendarError(source, f"it is not an iCalendar file ({exc})") from None
    if not isinstance(calendar, icalendar.Calendar) or calendar.name != "VCALENDAR":
        raise CalendarError(source, "it is not an iCalendar file (no VCALENDAR)")
    return calendar


def calendar_name(calendar: icalendar.Calendar, source: str) -> str:
    """The calendar's own name (X-WR-CALNAME), else its file or URL."""
    name = calendar.get("X-WR-CALNAME")
    return str(name) if name else source


def event_spans(
    loaded: LoadedCalendar,
    zone: ZoneInfo,
    start: datetime,
    end: datetime,
    *,
    source: str,
) -> list[Span]:
    """The calendar's event occurrences overlapping ``[start, end)`` (UTC) as spans.

    Raises:
        CalendarError: an event or recurrence rule cannot be expanded.

    """
    try:
        events = recurring_ical_events.of(loaded.calendar).between(start, end)
        spans: list[Span] = []
        for event in events:
            if str(event.get("STATUS", "")).upper() == "CANCELLED":
                continue
            what = str(event.get("SUMMARY", "")) or "(untitled event)"
            first = event["DTSTART"].dt
            last = event["DTEND"].dt if "DTEND" in event else _default_end(first)
            spans += [
                Span(s, e, what, source, _zone_name(first, zone))
                for s, e in _utc(first, last, zone)
            ]
    except CalendarError:
        raise
    except Exception as exc:  # the expansion raises many kinds of error on broken rules
        raise CalendarError(loaded.source, f"its events cannot be expanded ({exc})") from None
    return spans


def _default_end(first: date | datetime) -> date | datetime:
    # RFC 5545: without DTEND or DURATION an all-day event lasts a day, a timed one no time.
    return first if isinstance(first, datetime) else first + timedelta(days=1)


def _zone_name(first: date | datetime, zone: ZoneInfo) -> str:
    """The event's zone (its TZID when it has one), else the rule's for all-day and floating."""
    if not isinstance(first, datetime) or first.tzinfo is None:
        return zone.key
    return str(getattr(first.tzinfo, "key", None) or first.tzname() or "")


def _utc(
    first: date | datetime, last: date | datetime, zone: ZoneInfo
) -> list[tuple[datetime, datetime]]:
    if not isinstance(first, datetime):  # all-day: local midnights in the rule's zone
        first = datetime.combine(first, time())
    if not isinstance(last, datetime):
        last = datetime.combine(last, time())
    if first.tzinfo is None or last.tzinfo is None:  # floating: wall-clock in the rule's zone
        return wall_to_utc(zone, first.replace(tzinfo=None), last.replace(tzinfo=None))
    return [(first.astimezone(UTC), last.astimezone(UTC))]


def holiday_spans(
    country: str,
    subdivision: str | None,
    zone: ZoneInfo,
    start: datetime,
    end: datetime,
    *,
    language: str = "en_US",
) -> list[Span]:
    """Every public holiday of a country (and subdivision) in ``[start, end)`` as whole local days."""
    spans: list[Span] = []
    for year in range(start.astimezone(zone).year, end.astimezone(zone).year + 1):
        spans += _holiday_spans(country, subdivision, year, language, zone.key)
    return [s for s in spans if s.start < end and s.end > start]


@functools.lru_cache(maxsize=256)
def _holiday_spans(
    country: str, subdivision: str | None, year: int, language: str, zone_name: str
) -> tuple[Span, ...]:
    # Building a country's holidays costs milliseconds, paid on every check without this cache;
    # a year's holidays do not change within one installed version of the package.
    source = "holidays " + (f"{country}-{subdivision}" if subdivision else country)
    zone = ZoneInfo(zone_name)
    calendar = holidays.country_holidays(country, subdiv=subdivision, years=year, language=language)
    spans = []
    for day, name in sorted(calendar.items()):
        midnight = datetime.combine(day, time())
        spans += [
            Span(s, e, name, source, zone_name)
            for s, e in wall_to_utc(zone, midnight, midnight + timedelta(days=1))
        ]
    return tuple(spans)


def check_holidays(country: str, subdivision: str | None) -> str | None:
    """Why the ``holidays`` package cannot serve a country/subdivision, or None when it can."""
    try:
        holidays.country_holidays(country, subdiv=subdivision, years=[])
    except NotImplementedError as exc:
        return str(exc)
    return None
