"""Params of ``change-window``: windows, freezes, calendars and holidays, each in a time zone."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)

from guardrails.builtin._params import http_url, positive
from guardrails.builtin.change_window.calendars import check_holidays, is_url
from guardrails.builtin.change_window.rules import (
    Freeze,
    Window,
    invalid,
    parse_freeze,
    parse_window,
)
from workflows.models import Duration


def _check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise invalid(
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


def _check_source(text: str) -> str:
    if is_url(text):
        return http_url("https://calendar.example/freezes.ics")(text)
    if not text.strip():
        raise invalid("a calendar is a file path or an http(s) URL, not empty")
    return text


TimeZone = Annotated[str, AfterValidator(_check_timezone)]
WindowText = Annotated[str, AfterValidator(_check_window)]
FreezeText = Annotated[str, BeforeValidator(_date_as_text), AfterValidator(_check_freeze)]
Source = Annotated[str, AfterValidator(_check_source)]


class WindowEntry(BaseModel):
    """An allowed window with its own time zone (or a name): ``{window: …, timezone: …}``."""

    model_config = ConfigDict(extra="forbid")

    window: WindowText
    timezone: TimeZone | None = Field(default=None, description="default: the rule's timezone")
    name: str = Field(default="", max_length=200, description="how reasons name the window")


class FreezeEntry(BaseModel):
    """A freeze with its own time zone (or a name): ``{freeze: …, timezone: …, name: …}``."""

    model_config = ConfigDict(extra="forbid")

    freeze: FreezeText
    timezone: TimeZone | None = Field(default=None, description="default: the rule's timezone")
    name: str = Field(default="", max_length=200, description="how reasons name the freeze")


class CalendarEntry(BaseModel):
    """An iCalendar source: ``{calendar: path-or-URL, name: …, timezone: …}``."""

    model_config = ConfigDict(extra="forbid")

    calendar: Source = Field(description="a file path (on the worker) or an http(s) URL")
    name: str = Field(default="", max_length=200, description="default: X-WR-CALNAME or source")
    timezone: TimeZone | None = Field(
        default=None, description="for all-day and floating events; default: the rule's"
    )


class HolidayEntry(BaseModel):
    """Public holidays of a country (ISO 3166 code) and optional subdivision, from ``holidays``."""

    model_config = ConfigDict(extra="forbid")

    country: str = Field(min_length=2, max_length=3)
    subdivision: str | None = Field(default=None, max_length=20)
    timezone: TimeZone | None = Field(default=None, description="default: the rule's timezone")
    language: str = Field(default="en_US", max_length=10, description="of the holiday names")

    @model_validator(mode="after")
    def _known(self) -> HolidayEntry:
        problem = check_holidays(self.country, self.subdivision)
        if problem:
            raise invalid(f"holidays: {problem}")
        return self


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str | dict | date) else value


def _window_item(value: Any) -> Any:
    # A bare text is checked here, so that its error is located at the entry itself.
    return {"window": _check_window(value)} if isinstance(value, str) else value


def _freeze_item(value: Any) -> Any:
    value = _date_as_text(value)
    return {"freeze": _check_freeze(value)} if isinstance(value, str) else value


def _calendar_item(value: Any) -> Any:
    return {"calendar": _check_source(value)} if isinstance(value, str) else value


Windows = Annotated[
    list[Annotated[WindowEntry, BeforeValidator(_window_item)]], BeforeValidator(_one_or_many)
]
Freezes = Annotated[
    list[Annotated[FreezeEntry, BeforeValidator(_freeze_item)]], BeforeValidator(_one_or_many)
]
Calendars = Annotated[
    list[Annotated[CalendarEntry, BeforeValidator(_calendar_item)]],
    BeforeValidator(_one_or_many),
]
Holidays = Annotated[list[HolidayEntry], BeforeValidator(_one_or_many)]


class ChangeWindowParams(BaseModel):
    """Params of ``change-window``; see docs/change-windows.md for every form with examples."""

    model_config = ConfigDict(extra="forbid")

    timezone: TimeZone = Field(description="IANA time zone the windows and freezes are written in")
    allow: Windows = Field(
        default_factory=list,
        description="allowed weekly windows; with no allow_calendars either, always allowed",
    )
    freeze: Freezes = Field(
        default_factory=list, description="frozen local dates, date ranges or time ranges"
    )
    allow_calendars: Calendars = Field(
        default_factory=list, description="calendars whose events are allowed windows"
    )
    freeze_calendars: Calendars = Field(
        default_factory=list, description="calendars whose events are freezes"
    )
    freeze_holidays: Holidays = Field(
        default_factory=list, description="public holidays that freeze the whole local day"
    )
    calendar_ttl: Annotated[Duration, AfterValidator(positive)] = Field(
        default=timedelta(minutes=5), description="how long a fetched URL calendar is reused"
    )
    calendar_timeout: Annotated[Duration, AfterValidator(positive)] = Field(
        default=timedelta(seconds=5), description="the most a URL fetch may take"
    )
    calendar_max_bytes: int = Field(
        default=5_000_000, ge=1, le=50_000_000, description="the largest calendar read"
    )
    wave_allowance: Annotated[Duration, AfterValidator(positive)] = Field(
        default=timedelta(minutes=15),
        description="time a wave's mutations may take, added to its bake before each wave",
    )
    mid_rollout: Literal["finish", "pause", "rollback"] = Field(
        default="pause",
        description=(
            "when the rule closes between waves: finish (hold, page, go on when it opens), "
            "pause (page and wait for an operator) or rollback"
        ),
    )

    _windows: list[tuple[Window, ZoneInfo, str]] = PrivateAttr(default_factory=list)
    _freezes: list[tuple[Freeze, ZoneInfo, str]] = PrivateAttr(default_factory=list)

    def model_post_init(self, context: Any, /) -> None:
        """Keep the parsed windows and freezes (the strings are already known to parse)."""
        self._windows = [
            (parse_window(w.window), self.zone_of(w.timezone), w.name) for w in self.allow
        ]
        self._freezes = [
            (parse_freeze(f.freeze), self.zone_of(f.timezone), f.name) for f in self.freeze
        ]

    @property
    def zone(self) -> ZoneInfo:
        """The rule's time zone."""
        return ZoneInfo(self.timezone)

    def zone_of(self, name: str | None) -> ZoneInfo:
        """An entry's own time zone, else the rule's."""
        return ZoneInfo(name or self.timezone)

    @property
    def windows(self) -> list[tuple[Window, ZoneInfo, str]]:
        """The parsed weekly windows, each with its zone and name."""
        return self._windows

    @property
    def freezes(self) -> list[tuple[Freeze, ZoneInfo, str]]:
        """The parsed freezes, each with its zone and name."""
        return self._freezes

    @property
    def calendars(self) -> list[CalendarEntry]:
        """Every calendar source, allow and freeze."""
        return [*self.allow_calendars, *self.freeze_calendars]

    @property
    def restricted(self) -> bool:
        """Whether any allow window or allow calendar limits when changes may start."""
        return bool(self.allow or self.allow_calendars)
