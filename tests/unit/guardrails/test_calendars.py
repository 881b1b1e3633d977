"""change-window calendars: iCalendar files and URLs, recurrences, zones, caching, fail-closed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import icalendar
import pytest

from guardrails.base import CheckContext, Services
from guardrails.builtin.change_window import CalendarCache, ChangeWindow
from workflows.models import (
    Category,
    ChangeContext,
    CheckResult,
    CheckSpec,
    CheckStatus,
    Target,
)

BERLIN = "Europe/Berlin"
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def event(
    summary: str, start: date | datetime, end: date | datetime | None = None, **props: Any
) -> icalendar.Event:
    """An icalendar VEVENT; ``props`` are added as properties (rrule, exdate, rdate, status)."""
    found = icalendar.Event()
    found.add("uid", f"{summary}-{start.isoformat()}@test")
    found.add("summary", summary)
    found.add("dtstart", start)
    if end is not None:
        found.add("dtend", end)
    for name, value in props.items():
        found.add(name, value)
    return found


def calendar(*events: icalendar.Event, name: str = "") -> bytes:
    """A VCALENDAR with VTIMEZONEs for every zone its events use."""
    cal = icalendar.Calendar()
    cal.add("prodid", "-//changeguard tests//EN")
    cal.add("version", "2.0")
    if name:
        cal.add("x-wr-calname", name)
    for e in events:
        cal.add_component(e)
    cal.add_missing_timezones()
    return bytes(cal.to_ical())


def make_ctx(now: datetime, cache: CalendarCache, *, source: str = "platform") -> CheckContext:
    spec = CheckSpec(
        rule="release-calendar",
        source=source,
        guardrail="change-window",
        category=Category.TIMING,
        owner="release-eng",
        timeout=timedelta(seconds=10),
    )
    change = ChangeContext(
        change_id="chg-1",
        kind="http-deploy",
        environment="prod",
        team="payments",
        requester="alice",
        targets=[Target(id="web-1")],
    )
    return CheckContext(change=change, spec=spec, now=now, services=Services(calendar_cache=cache))


@pytest.fixture
def cache() -> CalendarCache:
    return CalendarCache()


async def run(
    params: dict[str, Any], now: datetime, cache: CalendarCache, **kw: str
) -> CheckResult:
    guardrail = ChangeWindow()
    return await guardrail.check(guardrail.parse_params(params), make_ctx(now, cache, **kw))


@dataclass
class Served:
    """What the loopback server answers per path, and the requests it saw."""

    routes: dict[str, tuple[int, bytes, dict[str, str]]] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    base: str = ""

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture(scope="module")
def loopback() -> Iterator[Served]:
    """A real HTTP server on 127.0.0.1 (loopback only), serving :class:`Served` routes."""
    served = Served()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            served.requests.append((self.path, dict(self.headers)))
            status, body, headers = served.routes.get(self.path, (404, b"not found", {}))
            if "ETag" in headers and self.headers.get("If-None-Match") == headers["ETag"]:
                status, body = 304, b""
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def server(loopback: Served) -> Served:
    """The module's loopback server with no routes and no requests seen yet."""
    loopback.routes.clear()
    loopback.requests.clear()
    return loopback


# --- events, recurrences, zones ----------------------------------------------------------------


def weekly_freeze(tmp_path: Path) -> str:
    """Tuesdays 10:00-12:00 New York, six weeks from June 2, without June 9, plus Thu June 11."""
    path = tmp_path / "freezes.ics"
    path.write_bytes(
        calendar(
            event(
                "Payments batch",
                datetime(2026, 6, 2, 10, 0, tzinfo=NEW_YORK),
                datetime(2026, 6, 2, 12, 0, tzinfo=NEW_YORK),
                rrule={"freq": "weekly", "count": 6},
                exdate=datetime(2026, 6, 9, 10, 0, tzinfo=NEW_YORK),
                rdate=datetime(2026, 6, 11, 10, 0, tzinfo=NEW_YORK),
            ),
            name="Batch freezes",
        )
    )
    return str(path)


async def test_recurring_freeze_event_waits_until_the_occurrence_ends(
    tmp_path: Path, cache: CalendarCache
) -> None:
    """Inside a weekly occurrence the check waits for its end, 12:00 New York (16:00 UTC)."""
    params = {"timezone": BERLIN, "freeze_calendars": [weekly_freeze(tmp_path)]}
    result = await run(params, utc(2026, 6, 16, 15, 0), cache)
    assert (result.status, result.retry_after, result.reason) == (
        CheckStatus.WAIT,
        utc(2026, 6, 16, 16, 0),
        "2026-06-16 17:00 Europe/Berlin is inside the freeze 'Payments batch' "
        "(calendar Batch freezes)",
    )
    assert result.evidence["freeze"] == {
        "what": "Payments batch",
        "source": "calendar Batch freezes",
        "timezone": "America/New_York",
        "start": utc(2026, 6, 16, 14).isoformat(),
        "end": utc(2026, 6, 16, 16).isoformat(),
    }
    assert result.evidence["calendars"] == [
        {"kind": "freeze", "name": "Batch freezes", "source": str(tmp_path / "freezes.ics")}
    ]


async def test_exdate_removes_and_rdate_adds_an_occurrence(
    tmp_path: Path, cache: CalendarCache
) -> None:
    """June 9 (EXDATE) is open; Thursday June 11 (RDATE) is frozen; after COUNT it is open."""
    params = {"timezone": BERLIN, "freeze_calendars": [weekly_freeze(tmp_path)]}
    excluded = await run(params, utc(2026, 6, 9, 15, 0), cache)
    added = await run(params, utc(2026, 6, 11, 15, 0), cache)
    after_count = await run(params, utc(2026, 7, 14, 15, 0), cache)
    assert [r.status for r in (excluded, added, after_count)] == [
        CheckStatus.PASS,
        CheckStatus.WAIT,
        CheckStatus.PASS,
    ]


async def test_allow_calendar_in_two_time_zones(tmp_path: Path, cache: CalendarCache) -> None:
    """Allowed slots in Tokyo and New York: each event counts in its own zone."""
    path = tmp_path / "slots.ics"
    path.write_bytes(
        calendar(
            event(
                "Tokyo slot",
                datetime(2026, 6, 15, 9, 0, tzinfo=TOKYO),
                datetime(2026, 6, 15, 11, 0, tzinfo=TOKYO),
                rrule={"freq": "daily", "count": 5},
            ),
            event(
                "New York slot",
                datetime(2026, 6, 15, 9, 0, tzinfo=NEW_YORK),
                datetime(2026, 6, 15, 10, 0, tzinfo=NEW_YORK),
            ),
        )
    )
    params = {"timezone": "UTC", "allow_calendars": [{"calendar": str(path), "name": "Slots"}]}
    tokyo = await run(params, utc(2026, 6, 15, 1, 0), cache)  # 10:00 Tokyo
    new_york = await run(params, utc(2026, 6, 15, 13, 30), cache)  # 09:30 New York
    between = await run(params, utc(2026, 6, 15, 3, 0), cache)  # 12:00 Tokyo
    assert [(r.status, r.reason) for r in (tokyo, new_york)] == [
        (
            CheckStatus.PASS,
            "Mon 01:00 UTC is inside the allowed window 'Tokyo slot' (calendar Slots)",
        ),
        (
            CheckStatus.PASS,
            "Mon 13:30 UTC is inside the allowed window 'New York slot' (calendar Slots)",
        ),
    ]
    assert (between.status, between.retry_after, between.reason) == (
        CheckStatus.WAIT,
        utc(2026, 6, 15, 13, 0),
        "Mon 03:00 UTC is outside the allowed windows calendar 'Slots'",
    )
    assert between.evidence["next_window"]["what"] == "New York slot"


async def test_event_across_a_daylight_saving_change(tmp_path: Path, cache: CalendarCache) -> None:
    """A freeze from Sat 22:00 to Sun 06:00 Berlin over spring-forward ends at 04:00 UTC."""
    berlin = ZoneInfo(BERLIN)
    path = tmp_path / "night.ics"
    path.write_bytes(
        calendar(
            event(
                "Night maintenance",
                datetime(2026, 3, 28, 22, 0, tzinfo=berlin),
                datetime(2026, 3, 29, 6, 0, tzinfo=berlin),
            )
        )
    )
    params = {"timezone": "UTC", "freeze_calendars": [str(path)]}
    result = await run(params, utc(2026, 3, 29, 0, 0), cache)
    assert (result.status, result.retry_after) == (CheckStatus.WAIT, utc(2026, 3, 29, 4, 0))
    assert result.evidence["freeze"]["start"] == utc(2026, 3, 28, 21).isoformat()


async def test_time_zone_defined_only_by_the_calendars_vtimezone(
    tmp_path: Path, cache: CalendarCache
) -> None:
    """A TZID no IANA database knows is read from the calendar's own VTIMEZONE."""
    path = tmp_path / "custom.ics"
    path.write_bytes(
        b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\n"
        b"BEGIN:VTIMEZONE\r\nTZID:Ops Standard Time\r\n"
        b"BEGIN:STANDARD\r\nDTSTART:19701025T030000\r\nRRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU\r\n"
        b"TZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\n"
        b"BEGIN:DAYLIGHT\r\nDTSTART:19700329T020000\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU\r\n"
        b"TZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nEND:DAYLIGHT\r\nEND:VTIMEZONE\r\n"
        b"BEGIN:VEVENT\r\nUID:c@t\r\nSUMMARY:Quarter close\r\n"
        b"DTSTART;TZID=Ops Standard Time:20260630T180000\r\n"
        b"DTEND;TZID=Ops Standard Time:20260701T060000\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    params = {"timezone": "UTC", "freeze_calendars": [str(path)]}
    result = await run(params, utc(2026, 6, 30, 20, 0), cache)
    assert (result.status, result.retry_after) == (CheckStatus.WAIT, utc(2026, 7, 1, 4, 0))


async def test_all_day_and_floating_events_use_the_rules_zone(
    tmp_path: Path, cache: CalendarCache
) -> None:
    """All-day freezes are whole local days, floating times the entry's zone; CANCELLED is skipped."""
    path = tmp_path / "local.ics"
    path.write_bytes(
        calendar(
            event("Release day", date(2026, 7, 10), date(2026, 7, 11)),
            event("Floating drill", datetime(2026, 7, 13, 9, 0), datetime(2026, 7, 13, 10, 0)),
            event("Called off", date(2026, 7, 14), date(2026, 7, 15), status="CANCELLED"),
        )
    )
    params = {"timezone": BERLIN, "freeze_calendars": [str(path)]}
    all_day = await run(params, utc(2026, 7, 10, 12, 0), cache)
    assert (all_day.status, all_day.retry_after) == (CheckStatus.WAIT, utc(2026, 7, 10, 22, 0))
    in_new_york = {
        "timezone": BERLIN,
        "freeze_calendars": [{"calendar": str(path), "timezone": "America/New_York"}],
    }
    floating = await run(in_new_york, utc(2026, 7, 13, 13, 30), cache)  # 09:30 New York
    assert (floating.status, floating.retry_after) == (CheckStatus.WAIT, utc(2026, 7, 13, 14, 0))
    assert (await run(params, utc(2026, 7, 14, 12, 0), cache)).status is CheckStatus.PASS


# --- URLs and the cache -------------------------------------------------------------------------


async def test_url_calendar_is_cached_for_its_ttl_with_the_age_in_the_evidence(
    server: Served, cache: CalendarCache
) -> None:
    """A check fetches; one 2 minutes later reuses the copy (age 120 s); after the TTL, it refetches."""
    body = calendar(event("Freeze", date(2026, 12, 24), date(2026, 12, 27)), name="Holidays")
    server.routes["/freezes.ics"] = (200, body, {"Content-Type": "text/calendar"})
    url = server.url("/freezes.ics")
    params = {"timezone": BERLIN, "freeze_calendars": [url], "calendar_ttl": "5m"}
    now = utc(2026, 12, 1, 9, 0)
    first = await run(params, now, cache)
    second = await run(params, now + timedelta(minutes=2), cache)
    third = await run(params, now + timedelta(minutes=6), cache)
    assert [r.status for r in (first, second, third)] == [CheckStatus.PASS] * 3
    assert [r.evidence["calendars"] for r in (first, second, third)] == [
        [{"kind": "freeze", "name": "Holidays", "source": url, "cached": False, "age_s": 0}],
        [{"kind": "freeze", "name": "Holidays", "source": url, "cached": True, "age_s": 120}],
        [{"kind": "freeze", "name": "Holidays", "source": url, "cached": False, "age_s": 0}],
    ]
    assert [path for path, _ in server.requests] == ["/freezes.ics", "/freezes.ics"]
    frozen = await run(params, utc(2026, 12, 1, 9, 0) + timedelta(days=24), cache)
    assert (frozen.status, frozen.retry_after) == (CheckStatus.WAIT, utc(2026, 12, 26, 23, 0))


async def test_url_calendar_is_revalidated_with_its_etag(
    server: Served, cache: CalendarCache
) -> None:
    """Past the TTL an unchanged calendar answers 304 to If-None-Match and the copy is reused."""
    body = calendar(event("Freeze", date(2026, 12, 24), date(2026, 12, 27)))
    server.routes["/etag.ics"] = (200, body, {"ETag": '"v1"'})
    params = {"timezone": BERLIN, "freeze_calendars": [server.url("/etag.ics")]}
    now = utc(2026, 12, 1, 9, 0)
    await run(params, now, cache)
    again = await run(params, now + timedelta(hours=1), cache)
    assert again.evidence["calendars"][0] | {"source": ""} == {
        "kind": "freeze",
        "name": server.url("/etag.ics"),
        "source": "",
        "cached": True,
        "age_s": 0,
    }
    assert [headers.get("If-None-Match") for _, headers in server.requests] == [None, '"v1"']


# --- fail closed --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "detail"),
    [
        (None, "the server answered 404"),
        ((200, b"this is not a calendar", {}), "it is not an iCalendar file"),
        ((500, b"oops", {}), "the server answered 500"),
        (
            (200, b"BEGIN:VCALENDAR\r\n" + b"X" * 3000 + b"\r\nEND:VCALENDAR\r\n", {}),
            "it is 3034 bytes, more than the limit of 2000",
        ),
    ],
)
async def test_unreadable_url_calendar_fails_closed_naming_calendar_and_owner(
    server: Served, cache: CalendarCache, route: Any, detail: str
) -> None:
    """A URL that is missing, broken, failing or too large is an error with owner and remedy."""
    if route is not None:
        server.routes["/cal.ics"] = route
    url = server.url("/cal.ics")
    params = {
        "timezone": BERLIN,
        "freeze_calendars": [{"calendar": url, "name": "Release freezes"}],
        "calendar_max_bytes": 2000,
    }
    result = await run(params, utc(2026, 6, 15, 9, 0), cache)
    assert (result.status, result.owner) == (CheckStatus.ERROR, "release-eng")
    assert result.reason.startswith(f"calendar 'Release freezes' ({url}) cannot be read: {detail}")
    assert result.reason.endswith(
        "; rule release-calendar (owner release-eng) stays closed until it can be read"
    )
    assert result.remedy == (
        f"ask release-eng to make {url} readable from the worker as an iCalendar file (.ics), "
        "or to remove it from rule release-calendar"
    )


async def test_missing_or_garbled_file_fails_closed_even_inside_a_window(
    tmp_path: Path, cache: CalendarCache
) -> None:
    """An unreadable freeze calendar never lets an otherwise open window pass."""
    garbled = tmp_path / "garbled.ics"
    garbled.write_bytes(
        b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART:2026zz\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
    missing = str(tmp_path / "missing.ics")
    params = {
        "timezone": BERLIN,
        "allow": ["Mon-Fri 00:00-24:00"],
        "freeze_calendars": [missing, str(garbled)],
    }
    result = await run(params, utc(2026, 6, 15, 9, 0), cache)
    assert result.status is CheckStatus.ERROR
    assert result.reason.startswith(
        f"calendar {missing!r} cannot be read: FileNotFoundError: No such file or directory; "
        f"calendar {str(garbled)!r} cannot be read: its events cannot be expanded"
    )
    assert [c.get("error", "")[:17] for c in result.evidence["calendars"]] == [
        "FileNotFoundError",
        "its events cannot",
    ]


async def test_refetch_failure_after_the_ttl_fails_closed(
    server: Served, cache: CalendarCache
) -> None:
    """A cached copy past its TTL is not used when the refetch fails: a new freeze may exist."""
    body = calendar(event("Freeze", date(2026, 12, 24), date(2026, 12, 27)))
    server.routes["/flaky.ics"] = (200, body, {})
    params = {"timezone": BERLIN, "freeze_calendars": [server.url("/flaky.ics")]}
    now = utc(2026, 12, 1, 9, 0)
    assert (await run(params, now, cache)).status is CheckStatus.PASS
    server.routes["/flaky.ics"] = (503, b"", {})
    later = await run(params, now + timedelta(minutes=10), cache)
    assert later.status is CheckStatus.ERROR


async def test_request_rule_may_not_read_worker_files(tmp_path: Path, cache: CalendarCache) -> None:
    """A rule a request adds naming a file path is refused: workers read no path from a request."""
    params = {"timezone": BERLIN, "freeze_calendars": [weekly_freeze(tmp_path)]}
    result = await run(params, utc(2026, 6, 15, 9, 0), cache, source="request")
    assert result.status is CheckStatus.ERROR
    assert "a rule added by a request may only name http(s) URLs" in result.reason


def test_calendar_params_accept_one_or_many_and_refuse_bad_urls() -> None:
    """A single calendar, a list, and dict entries parse; a non-http URL-like text is a path."""
    guardrail = ChangeWindow()
    one = guardrail.parse_params({"timezone": "UTC", "freeze_calendars": "a.ics"})
    assert [c.calendar for c in one.freeze_calendars] == ["a.ics"]
    problems = guardrail.params_model.model_validate
    with pytest.raises(ValueError, match="is not an http\\(s\\) URL"):
        problems({"timezone": "UTC", "allow_calendars": ["https://"]})


async def test_cache_keeps_a_bounded_number_of_calendars(server: Served) -> None:
    """Past its size the cache forgets the copy fetched longest ago."""
    cache = CalendarCache(max_entries=2)
    for name in ("a", "b", "c"):
        server.routes[f"/{name}.ics"] = (200, calendar(event(name, date(2026, 12, 24))), {})
    now = utc(2026, 12, 1, 9, 0)
    for minute, name in enumerate(("a", "b", "c")):
        params = {"timezone": BERLIN, "freeze_calendars": [server.url(f"/{name}.ics")]}
        await run(params, now + timedelta(minutes=minute), cache)
    again = await run(
        {"timezone": BERLIN, "freeze_calendars": [server.url("/a.ics")]},
        now + timedelta(minutes=3),
        cache,
    )
    assert again.evidence["calendars"][0]["cached"] is False
    assert [path for path, _ in server.requests] == ["/a.ics", "/b.ics", "/c.ics", "/a.ics"]
