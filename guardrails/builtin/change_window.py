"""``change-window``: changes start only inside allowed local-time windows and outside freezes.

Windows are wall-clock times in the policy's time zone, so "Mon-Thu 09:00-16:00" means 09:00 in
Berlin in both winter and summer; daylight-saving transitions are handled by ``zoneinfo``. When
the window is closed the check answers ``wait`` with the next opening as ``retry_after`` if that
opening comes before the change's deadline, and ``fail`` otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr
from pydantic_core import PydanticCustomError

from guardrails.base import CheckContext, Guardrail
from workflows.models import Category, CheckResult, OptOut

SEARCH_DAYS = 400
"""How far ahead the next opening is searched for before the policy is declared unsatisfiable."""

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NAMES = {name: i for names in (DAYS, _FULL_DAYS) for i, name in enumerate(names)}
_WINDOW = re.compile(r"^(?P<days>[A-Za-z,\- ]+?)\s+(?P<start>\d\d:\d\d)\s*-\s*(?P<end>\d\d:\d\d)$")
_DATE_FORMAT = "%Y-%m-%d"


def _invalid(message: str) -> PydanticCustomError:
    # The message goes through the context so that braces in user input are not templates.
    return PydanticCustomError("change_window", "{message}", {"message": message})


@dataclass(frozen=True)
class Window:
    """An allowed window: weekdays (0 = Monday) and a local time range [start, end) in minutes."""

    text: str
    days: frozenset[int]
    start: int
    end: int

    def contains(self, local: datetime) -> bool:
        """Whether a local wall-clock time is inside the window."""
        minute = local.hour * 60 + local.minute + local.second / 60
        return local.weekday() in self.days and self.start <= minute < self.end


@dataclass(frozen=True)
class Freeze:
    """A freeze: an inclusive range of local dates."""

    text: str
    first: date
    last: date

    def contains(self, day: date) -> bool:
        """Whether a local date is frozen."""
        return self.first <= day <= self.last


def _minutes(text: str, entry: str) -> int:
    hours, minutes = int(text[:2]), int(text[3:])
    if minutes > 59 or hours > 24 or (hours == 24 and minutes):
        raise _invalid(f"{entry!r}: {text} is not a time between 00:00 and 24:00")
    return hours * 60 + minutes


def _day(text: str, entry: str) -> int:
    key = text.strip().lower()
    if key not in _DAY_NAMES:
        raise _invalid(
            f"{entry!r}: {text.strip()!r} is not a day; use Mon, Tue, Wed, Thu, Fri, Sat, Sun"
        )
    return _DAY_NAMES[key]


def parse_window(text: str) -> Window:
    """Parse ``"Mon-Thu 09:00-16:00"``, ``"Mon,Wed 10:00-11:00"`` or ``"Sat-Sun 00:00-24:00"``.

    Day ranges may wrap around the week (``Fri-Mon``). Windows may not cross midnight: write
    ``"Fri 22:00-24:00"`` and ``"Sat 00:00-02:00"`` instead.

    Raises:
        PydanticCustomError: the text is not a window; the message quotes it.

    """
    entry = " ".join(text.split())
    m = _WINDOW.match(entry)
    if not m:
        raise _invalid(
            f"{text!r} is not a window; write days and a local time range, "
            "e.g. 'Mon-Thu 09:00-16:00' or 'Mon,Wed 10:00-11:00'"
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
    if end <= start:
        raise _invalid(
            f"{entry!r}: the window must end after it starts; split windows that cross midnight, "
            "e.g. 'Fri 22:00-24:00' and 'Sat 00:00-02:00'"
        )
    return Window(text=entry, days=frozenset(days), start=start, end=end)


def parse_freeze(text: str) -> Freeze:
    """Parse ``"2026-12-20/2027-01-04"`` (inclusive) or a single date ``"2026-12-25"``.

    Raises:
        PydanticCustomError: the text is not a date or a range of dates; the message quotes it.

    """
    entry = text.strip()
    first_text, _, last_text = entry.partition("/")
    try:
        first = datetime.strptime(first_text.strip(), _DATE_FORMAT).date()
        last = datetime.strptime(last_text.strip(), _DATE_FORMAT).date() if last_text else first
    except ValueError:
        raise _invalid(
            f"{text!r} is not a freeze; write a date '2026-12-25' or an inclusive range "
            "'2026-12-20/2027-01-04'"
        ) from None
    if last < first:
        raise _invalid(f"{text!r}: the freeze ends before it starts")
    return Freeze(text=entry, first=first, last=last)


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise _invalid(
            f"unknown time zone {name!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None
    return name


def _check_window(text: str) -> str:
    return parse_window(text).text


def _date_as_text(value: Any) -> Any:
    # YAML reads an unquoted 2026-12-25 as a date; accept it as the text the author meant.
    return value.isoformat() if isinstance(value, date) else value


def _check_freeze(text: str) -> str:
    return parse_freeze(text).text


class ChangeWindowParams(BaseModel):
    """Params of ``change-window``: a time zone, allowed windows and freezes (local dates)."""

    model_config = ConfigDict(extra="forbid")

    timezone: Annotated[str, AfterValidator(_check_timezone)] = Field(
        description="IANA time zone the windows and freezes are written in"
    )
    allow: list[Annotated[str, AfterValidator(_check_window)]] = Field(
        default_factory=list, description="allowed windows; empty means always allowed"
    )
    freeze: list[Annotated[str, BeforeValidator(_date_as_text), AfterValidator(_check_freeze)]] = (
        Field(default_factory=list, description="frozen local dates or inclusive date ranges")
    )

    _windows: list[Window] = PrivateAttr(default_factory=list)
    _freezes: list[Freeze] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        """Keep the parsed windows and freezes (the strings are already known to parse)."""
        self._windows = [parse_window(w) for w in self.allow]
        self._freezes = [parse_freeze(f) for f in self.freeze]

    @property
    def zone(self) -> ZoneInfo:
        """The time zone."""
        return ZoneInfo(self.timezone)

    @property
    def windows(self) -> list[Window]:
        """The parsed allowed windows."""
        return self._windows

    @property
    def freezes(self) -> list[Freeze]:
        """The parsed freezes."""
        return self._freezes

    def window_at(self, local: datetime) -> Window | None:
        """Find the allowed window a local time is in (without windows, always a placeholder)."""
        if not self._windows:
            return Window(text="(no windows: always allowed)", days=frozenset(), start=0, end=0)
        return next((w for w in self._windows if w.contains(local)), None)

    def freeze_at(self, local: datetime) -> Freeze | None:
        """Find the freeze a local time is in, if any."""
        return next((f for f in self._freezes if f.contains(local.date())), None)

    def is_open(self, instant: datetime) -> bool:
        """Whether a change may start at an (aware) instant."""
        local = instant.astimezone(self.zone)
        return self.window_at(local) is not None and self.freeze_at(local) is None

    def next_opening(self, now: datetime) -> datetime | None:
        """Find the first instant at or after ``now`` when a change may start, in UTC.

        Openings can only be ``now``, a window's start, or a local midnight (when a freeze ends),
        so those are the only candidates examined, day by day for :data:`SEARCH_DAYS` days.
        """
        if self.is_open(now):
            return now.astimezone(UTC)
        zone = self.zone
        today = now.astimezone(zone).date()
        starts = sorted({0} | {w.start for w in self._windows})
        for offset in range(-1, SEARCH_DAYS + 1):
            day = today + timedelta(days=offset)
            candidates = sorted(
                instant
                for minute in starts
                for instant in _instants(day, minute, zone)
                if instant >= now
            )
            for instant in candidates:
                if self.is_open(instant):
                    return instant.astimezone(UTC)
        return None


def _instants(day: date, minute: int, zone: ZoneInfo) -> list[datetime]:
    """List the instants at which local wall-clock ``day`` + ``minute`` happens (1 or 2).

    A wall time that is skipped by a daylight-saving gap is mapped to the end of the gap, the
    first instant whose wall clock is at or after it.
    """
    wall = datetime.combine(day, time()) + timedelta(minutes=minute)
    found = []
    for fold in (0, 1):
        candidate = wall.replace(tzinfo=zone, fold=fold)
        instant = candidate.astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == wall:
            found.append(instant)
    if found:
        return found
    # In a gap: fold=1 lands before it, fold=0 after it; bisect for the transition.
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return [high.replace(microsecond=0)]


def _local_label(instant: datetime, zone: ZoneInfo, name: str) -> str:
    local = instant.astimezone(zone)
    utc = instant.astimezone(UTC)
    utc_text = utc.strftime("%H:%M" if utc.date() == local.date() else "%Y-%m-%d %H:%M")
    return f"{local:%Y-%m-%d %H:%M} {name} ({utc_text} UTC)"


class ChangeWindow(Guardrail[ChangeWindowParams]):
    """Allow changes only inside local-time windows and outside freeze dates."""

    name = "change-window"
    category = Category.TIMING
    params_model = ChangeWindowParams
    default_owner = "release-eng"
    default_timeout = timedelta(seconds=10)
    description = "changes start only inside allowed local-time windows and outside freezes"

    async def check(self, params: ChangeWindowParams, ctx: CheckContext) -> CheckResult:
        """Pass inside a window; else wait for the next opening, or fail if it is too late.

        Without a deadline the check always waits (the workflow always sets one, by default 24h
        after the change starts, so in practice a far-off opening fails).
        """
        now = ctx.now if ctx.now.tzinfo else ctx.now.replace(tzinfo=UTC)
        zone = params.zone
        local = now.astimezone(zone)
        window = params.window_at(local)
        freeze = params.freeze_at(local)
        evidence: dict[str, Any] = {
            "timezone": params.timezone,
            "local_time": local.isoformat(),
            "next_opening": None,
        }
        if window is not None and freeze is None:
            return ctx.passed(
                f"{local:%a %H:%M} {params.timezone} is inside the allowed window {window.text}"
                if params.windows
                else f"{local:%Y-%m-%d} {params.timezone} is not frozen and no windows restrict it",
                evidence=evidence,
            )

        allowed = ", ".join(w.text for w in params.windows)
        if freeze is not None and window is None:
            reason = (
                f"{local:%a %Y-%m-%d %H:%M} {params.timezone} is inside the freeze {freeze.text} "
                f"and outside the allowed windows {allowed}"
            )
        elif freeze is not None:
            reason = f"{local:%Y-%m-%d %H:%M} {params.timezone} is inside the freeze {freeze.text}"
        else:
            reason = f"{local:%a %H:%M} {params.timezone} is outside the allowed windows {allowed}"

        approval = _approval_hint(ctx)
        opening = params.next_opening(now)
        if opening is None:
            return ctx.failed(
                f"{reason}, and there is no opening in the next {SEARCH_DAYS} days",
                remedy=(
                    f"ask {ctx.spec.owner} to fix the windows and freezes of {ctx.spec.guardrail} "
                    f"in the policy{approval}"
                ),
                evidence=evidence,
            )
        evidence["next_opening"] = opening.isoformat()
        when = _local_label(opening, zone, params.timezone)
        deadline = ctx.change.deadline
        if deadline is None or opening < deadline:
            return ctx.wait(
                reason,
                remedy=(
                    f"wait for the next opening at {when}, "
                    f"when the change retries by itself{approval}"
                ),
                retry_after=opening,
                evidence=evidence,
            )
        return ctx.failed(
            f"{reason}; the next opening at {when} is after the deadline "
            f"{deadline.astimezone(UTC):%Y-%m-%d %H:%M} UTC",
            remedy=f"wait for the next opening at {when}, or set a deadline after it{approval}",
            evidence=evidence,
        )


def _approval_hint(ctx: CheckContext) -> str:
    rule = ctx.spec.opt_out_rule
    if rule is None or ctx.spec.opt_out is not OptOut.APPROVABLE:
        return ""
    who = " or ".join(rule.approvers)
    what = "an approval" if rule.required == 1 else f"{rule.required} approvals"
    return f", or ask {who} for {what}"
