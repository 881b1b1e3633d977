"""The change-window guardrail: windows, freezes, holidays, deadlines, daylight saving, openings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from guardrails.base import CheckContext, new_registry, params_errors
from guardrails.builtin.change_window import (
    SEARCH_DAYS,
    ChangeWindow,
    ChangeWindowParams,
    Opening,
    build_schedule,
    earliest_common_opening,
    intersect,
    next_opening,
    opening_end,
    parse_freeze,
    parse_window,
)
from workflows.models import (
    Category,
    ChangeContext,
    CheckResult,
    CheckSpec,
    CheckStatus,
    OptOut,
    OptOutRule,
    Target,
)
from workflows.spans import Span

BERLIN = "Europe/Berlin"
WEEKDAYS = {"timezone": BERLIN, "allow": ["Mon-Thu 09:00-16:00"]}
HOLIDAYS = {**WEEKDAYS, "freeze": ["2026-12-20/2027-01-04"]}
SRE = OptOutRule(approvers=["sre-leads"])


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def make_ctx(
    now: datetime,
    *,
    deadline: datetime | None = None,
    rule: OptOutRule | None = None,
    opt_out: OptOut = OptOut.APPROVABLE,
) -> CheckContext:
    spec = CheckSpec(
        guardrail="change-window",
        category=Category.TIMING,
        owner="release-eng",
        timeout=timedelta(seconds=10),
        opt_out=opt_out,
        opt_out_rule=rule,
    )
    change = ChangeContext(
        change_id="chg-1",
        kind="http-deploy",
        environment="prod",
        team="payments",
        requester="alice",
        targets=[Target(id="web-1")],
        deadline=deadline,
    )
    return CheckContext(change=change, spec=spec, now=now)


async def run(params: dict[str, Any], ctx: CheckContext) -> CheckResult:
    guardrail = ChangeWindow()
    return await guardrail.check(guardrail.parse_params(params), ctx)


def parse(params: dict[str, Any]) -> ChangeWindowParams:
    return ChangeWindowParams.model_validate(params)


def span(what: str, start: datetime, end: datetime, **kw: str) -> dict[str, str]:
    """A span as the evidence shows it."""
    return {
        "what": what,
        "source": kw.get("source", "policy"),
        "timezone": kw.get("timezone", BERLIN),
        "start": start.isoformat(),
        "end": end.isoformat(),
    }


def without_openings(evidence: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in evidence.items() if k not in ("openings", "openings_until")}


async def test_inside_window_passes() -> None:
    """A Thursday 10:00 Berlin change inside Mon-Thu 09:00-16:00 passes and names the window."""
    now = utc(2026, 6, 11, 8, 0)  # Thu 10:00 CEST
    result = await run(WEEKDAYS, make_ctx(now))
    assert result == CheckResult(
        guardrail="change-window",
        category=Category.TIMING,
        status=CheckStatus.PASS,
        reason="Thu 10:00 Europe/Berlin is inside the allowed window Mon-Thu 09:00-16:00",
        owner="release-eng",
        evidence=result.evidence,
    )
    assert without_openings(result.evidence) == {
        "timezone": BERLIN,
        "local_time": "2026-06-11T10:00:00+02:00",
        "next_opening": None,
        "window": span("Mon-Thu 09:00-16:00", utc(2026, 6, 11, 7), utc(2026, 6, 11, 14)),
        "freeze": None,
        "opening_end": utc(2026, 6, 11, 14).isoformat(),
    }
    assert result.evidence["openings"][:2] == [
        [now.isoformat(), utc(2026, 6, 11, 14).isoformat()],
        [utc(2026, 6, 15, 7).isoformat(), utc(2026, 6, 15, 14).isoformat()],
    ]
    assert result.evidence["openings_until"] == utc(2026, 7, 9, 8).isoformat()


async def test_weekend_waits_until_monday_morning() -> None:
    """On a Saturday with a later deadline the check waits exactly until Monday 09:00 local."""
    now = utc(2026, 6, 13, 8, 0)  # Sat 10:00 CEST
    ctx = make_ctx(now, deadline=utc(2026, 6, 16, 12, 0), rule=SRE)
    result = await run(WEEKDAYS, ctx)
    monday = utc(2026, 6, 15, 7, 0)  # Mon 09:00 CEST
    assert result == CheckResult(
        guardrail="change-window",
        category=Category.TIMING,
        status=CheckStatus.WAIT,
        reason="Sat 10:00 Europe/Berlin is outside the allowed windows Mon-Thu 09:00-16:00",
        remedy=(
            "wait for the next opening at 2026-06-15 09:00 Europe/Berlin (07:00 UTC), "
            "when the change retries by itself, or ask sre-leads for an approval"
        ),
        owner="release-eng",
        approvers=["sre-leads"],
        approval=ctx.spec.opt_out_rule,
        retry_after=monday,
        evidence=result.evidence,
    )
    assert without_openings(result.evidence) == {
        "timezone": BERLIN,
        "local_time": "2026-06-13T10:00:00+02:00",
        "next_opening": monday.isoformat(),
        "window": None,
        "freeze": None,
        "next_window": span("Mon-Thu 09:00-16:00", monday, utc(2026, 6, 15, 14)),
    }


async def test_no_deadline_waits() -> None:
    """Without a deadline a closed window is a wait, never a failure."""
    result = await run(WEEKDAYS, make_ctx(utc(2026, 6, 13, 8, 0)))
    assert (result.status, result.retry_after) == (CheckStatus.WAIT, utc(2026, 6, 15, 7, 0))


async def test_deadline_before_opening_fails_and_names_opening() -> None:
    """When the deadline comes before the next opening the check fails and says when it opens."""
    ctx = make_ctx(utc(2026, 6, 13, 8, 0), deadline=utc(2026, 6, 14, 12, 0), rule=SRE)
    result = await run(WEEKDAYS, ctx)
    assert (result.status, result.retry_after) == (CheckStatus.FAIL, None)
    assert result.reason == (
        "Sat 10:00 Europe/Berlin is outside the allowed windows Mon-Thu 09:00-16:00; "
        "the next opening at 2026-06-15 09:00 Europe/Berlin (07:00 UTC) is after the deadline "
        "2026-06-14 12:00 UTC"
    )
    assert result.remedy == (
        "wait for the next opening at 2026-06-15 09:00 Europe/Berlin (07:00 UTC), "
        "or set a deadline after it, or ask sre-leads for an approval"
    )


async def test_no_approval_hint_without_rule() -> None:
    """The remedy only mentions approval when the policy names approvers."""
    ctx = make_ctx(utc(2026, 6, 13, 8, 0), deadline=utc(2026, 6, 14, 12, 0))
    result = await run(WEEKDAYS, ctx)
    assert result.remedy == (
        "wait for the next opening at 2026-06-15 09:00 Europe/Berlin (07:00 UTC), "
        "or set a deadline after it"
    )


async def test_freeze_opening_is_after_freeze_end() -> None:
    """Inside a freeze the next opening is the first window after the freeze's last day."""
    now = utc(2026, 12, 22, 9, 0)  # Tue 10:00 CET, inside both a window and the freeze
    ctx = make_ctx(now, deadline=utc(2026, 12, 24, 0, 0), rule=SRE)
    result = await run(HOLIDAYS, ctx)
    assert result.status is CheckStatus.FAIL
    assert result.reason.startswith(
        "2026-12-22 10:00 Europe/Berlin is inside the freeze 2026-12-20/2027-01-04; "
    )
    assert result.remedy == (
        "wait for the next opening at 2027-01-05 09:00 Europe/Berlin (08:00 UTC), "
        "or set a deadline after it, or ask sre-leads for an approval"
    )
    assert result.evidence["next_opening"] == "2027-01-05T08:00:00+00:00"


async def test_single_date_freeze_without_windows() -> None:
    """With no windows a single frozen date opens at the next local midnight."""
    params = {"timezone": BERLIN, "freeze": ["2026-12-25"]}
    result = await run(params, make_ctx(utc(2026, 12, 25, 12, 0)))
    assert (result.status, result.retry_after) == (CheckStatus.WAIT, utc(2026, 12, 25, 23, 0))
    assert result.reason == "2026-12-25 13:00 Europe/Berlin is inside the freeze 2026-12-25"
    passing = await run(params, make_ctx(utc(2026, 12, 26, 12, 0)))
    assert passing.status is CheckStatus.PASS


async def test_frozen_and_outside_window_says_both() -> None:
    """A weekend inside a freeze names the freeze and the windows."""
    result = await run(HOLIDAYS, make_ctx(utc(2026, 12, 26, 9, 0)))
    assert result.reason == (
        "Sat 2026-12-26 10:00 Europe/Berlin is inside the freeze 2026-12-20/2027-01-04 "
        "and outside the allowed windows Mon-Thu 09:00-16:00"
    )
    assert result.retry_after == utc(2027, 1, 5, 8, 0)


@pytest.mark.parametrize(
    ("now", "opening"),
    [
        # Spring forward (2026-03-29): Monday 09:00 is CEST, i.e. 07:00 UTC, not 08:00.
        (utc(2026, 3, 28, 9, 0), utc(2026, 3, 30, 7, 0)),
        # Fall back (2026-10-25): Monday 09:00 is CET again, i.e. 08:00 UTC.
        (utc(2026, 10, 24, 8, 0), utc(2026, 10, 26, 8, 0)),
    ],
)
async def test_dst_transition_week(now: datetime, opening: datetime) -> None:
    """Across a daylight-saving change the opening stays at 09:00 local wall-clock time."""
    result = await run(WEEKDAYS, make_ctx(now))
    assert result.retry_after == opening


async def test_window_start_inside_dst_gap_opens_at_the_transition() -> None:
    """A window starting at a skipped wall time (02:30 on spring-forward day) opens at 03:00."""
    params = {"timezone": BERLIN, "allow": ["Sun 02:30-04:00"]}
    result = await run(params, make_ctx(utc(2026, 3, 28, 12, 0)))
    assert result.retry_after == utc(2026, 3, 29, 1, 0)  # 03:00 CEST, the first wall time >= 02:30


async def test_repeated_wall_time_on_fall_back_day_opens_at_second_occurrence() -> None:
    """After 02:30 CEST has passed on fall-back day, 02:30 CET (an hour later) still opens."""
    params = {"timezone": BERLIN, "allow": ["Sun 02:30-02:45"]}
    result = await run(params, make_ctx(utc(2026, 10, 25, 0, 50)))  # 02:50 CEST
    assert result.retry_after == utc(2026, 10, 25, 1, 30)  # 02:30 CET


async def test_same_utc_time_differs_with_dst() -> None:
    """07:30 UTC on a Monday is inside 09:00-16:00 in summer (09:30) but not in winter (08:30)."""
    summer = await run(WEEKDAYS, make_ctx(utc(2026, 6, 15, 7, 30)))
    winter = await run(WEEKDAYS, make_ctx(utc(2026, 1, 12, 7, 30)))
    assert (summer.status, winter.status) == (CheckStatus.PASS, CheckStatus.WAIT)
    assert winter.retry_after == utc(2026, 1, 12, 8, 0)


async def test_no_opening_within_search_horizon_fails() -> None:
    """A policy whose windows are frozen for over 400 days fails instead of waiting forever."""
    params = {**WEEKDAYS, "freeze": ["2026-01-01/2028-12-31"]}
    result = await run(params, make_ctx(utc(2026, 6, 13, 8, 0)))
    assert result.status is CheckStatus.FAIL
    assert result.reason.endswith("and there is no opening in the next 400 days")
    assert result.evidence["next_opening"] is None


def test_unquoted_yaml_date_is_a_freeze() -> None:
    """An unquoted YAML date (read as a date object) is accepted as a single-day freeze."""
    params = ChangeWindow().parse_params(yaml.safe_load("{timezone: UTC, freeze: [2026-12-25]}"))
    assert [f.freeze for f in params.freeze] == ["2026-12-25"]


def test_window_syntax_variants() -> None:
    """Day lists, ranges, wrapping ranges and 24:00 all parse to the right days and minutes."""
    assert parse_window("Mon,Wed 10:00-11:00").days == {0, 2}
    assert parse_window("Sat-Sun 00:00-24:00").end == 24 * 60
    assert parse_window("Fri-Mon 01:00-02:00").days == {4, 5, 6, 0}
    assert parse_window("friday 09:00-12:00").days == {4}


def test_bad_timezone_and_window_are_params_errors_naming_the_entry() -> None:
    """Every bad entry is reported with its position, quoting what was written."""
    problems = params_errors(
        ChangeWindow(),
        {
            "timezone": "Mars/Base",
            "allow": [
                "Mon-Thu 09:00-16:00",
                "Mon-Thx 09:00-16:00",
                "Fri 09:00-09:00",
                "Mon,Tue 22:00-Wed 06:00",
            ],
            "freeze": ["2026-12-40", "2026-12-24T12:00"],
        },
    )
    assert problems == [
        "params.timezone: unknown time zone 'Mars/Base'; use an IANA name such as "
        "'Europe/Berlin' or 'UTC'",
        "params.allow.1: 'Mon-Thx 09:00-16:00': 'Thx' is not a day; "
        "use Mon, Tue, Wed, Thu, Fri, Sat, Sun",
        "params.allow.2: 'Fri 09:00-09:00': the window is empty; for a whole day write e.g. "
        "'Mon 00:00-24:00'",
        "params.allow.3: 'Mon,Tue 22:00-Wed 06:00': a window that ends on a named day starts on "
        "one day only",
        "params.freeze.0: '2026-12-40' is not a freeze; write a date '2026-12-25', an "
        "inclusive range '2026-12-20/2027-01-04' or local times '2026-12-24T12:00/2026-12-27T08:00'",
        "params.freeze.1: '2026-12-24T12:00' is not a freeze; write a date '2026-12-25', an "
        "inclusive range '2026-12-20/2027-01-04' or local times '2026-12-24T12:00/2026-12-27T08:00'",
    ]


def test_params_require_timezone_and_forbid_unknown_fields() -> None:
    """A missing time zone and a misspelt field are both reported."""
    problems = params_errors(ChangeWindow(), {"allow": [], "frezee": []})
    assert problems == [
        "params.timezone: Field required",
        "params.frezee: unknown field",
    ]


@pytest.mark.parametrize(
    ("params", "now", "deadline"),
    [
        (WEEKDAYS, utc(2026, 6, 13, 8, 0), None),
        (WEEKDAYS, utc(2026, 6, 13, 8, 0), utc(2026, 6, 13, 9, 0)),
        (HOLIDAYS, utc(2026, 12, 22, 9, 0), utc(2026, 12, 23, 9, 0)),
        ({**WEEKDAYS, "freeze": ["2026-01-01/2028-12-31"]}, utc(2026, 6, 13, 8, 0), None),
    ],
)
async def test_every_non_pass_says_why_what_and_who(
    params: dict[str, Any], now: datetime, deadline: datetime | None
) -> None:
    """I5: every non-passing result has a reason, a remedy and an owner."""
    result = await run(params, make_ctx(now, deadline=deadline))
    assert result.status is not CheckStatus.PASS
    assert all((result.reason, result.remedy, result.owner))


def test_registers_against_the_contract() -> None:
    """ChangeWindow meets the guardrail contract with its documented defaults."""
    registry = new_registry()
    registry.register(ChangeWindow)
    guardrail = registry.get("change-window")
    assert (
        guardrail.category,
        guardrail.default_owner,
        guardrail.default_timeout,
        guardrail.params_model,
    ) == (Category.TIMING, "release-eng", timedelta(seconds=10), ChangeWindowParams)


# --- windows across midnight and the week -------------------------------------------------------


def test_window_forms_across_midnight_and_the_week() -> None:
    """An end at or before the start runs into the next day; an end day runs across the week."""
    night, explicit = parse_window("Fri 22:00-06:00"), parse_window("Fri 22:00-Sat 06:00")
    assert (night.days, night.start, night.end) == (explicit.days, explicit.start, explicit.end)
    assert (parse_window("Fri 22:00-06:00").start, parse_window("Fri 22:00-06:00").end) == (
        22 * 60,
        30 * 60,
    )
    assert parse_window("Sun 22:00-Mon 06:00").end == 30 * 60
    weekend = parse_window("Fri 22:00 - Mon 06:00")
    assert (weekend.text, weekend.days, weekend.end) == (
        "Fri 22:00 - Mon 06:00",
        frozenset({4}),
        (3 * 24 + 6) * 60,
    )
    assert parse_window("Mon-Fri 23:00-01:00").days == {0, 1, 2, 3, 4}


async def test_window_across_midnight_passes_after_midnight_and_waits_after_it_ends() -> None:
    """'Fri 22:00-06:00' is open on Saturday 03:00 and, after 06:00, reopens the next Friday."""
    params = {"timezone": BERLIN, "allow": ["Fri 22:00-06:00"]}
    inside = await run(params, make_ctx(utc(2026, 6, 13, 1, 0)))  # Sat 03:00 CEST
    assert (inside.status, inside.reason) == (
        CheckStatus.PASS,
        "Sat 03:00 Europe/Berlin is inside the allowed window Fri 22:00-06:00",
    )
    assert inside.evidence["window"] == span(
        "Fri 22:00-06:00", utc(2026, 6, 12, 20), utc(2026, 6, 13, 4)
    )
    assert inside.evidence["opening_end"] == utc(2026, 6, 13, 4).isoformat()
    after = await run(params, make_ctx(utc(2026, 6, 13, 5, 0)))  # Sat 07:00 CEST
    assert (after.status, after.retry_after) == (CheckStatus.WAIT, utc(2026, 6, 19, 20, 0))


async def test_window_across_sunday_to_monday() -> None:
    """'Sun 22:00-Mon 06:00' is open on Monday 05:00 and, from Monday 07:00, waits for Sunday."""
    params = {"timezone": BERLIN, "allow": ["Sun 22:00-Mon 06:00"]}
    monday = await run(params, make_ctx(utc(2026, 6, 15, 3, 0)))  # Mon 05:00 CEST
    assert (monday.status, monday.evidence["opening_end"]) == (
        CheckStatus.PASS,
        utc(2026, 6, 15, 4).isoformat(),
    )
    later = await run(params, make_ctx(utc(2026, 6, 15, 5, 0)))  # Mon 07:00 CEST
    assert (later.status, later.retry_after) == (CheckStatus.WAIT, utc(2026, 6, 21, 20, 0))


async def test_weekend_window_spans_three_nights() -> None:
    """'Fri 22:00 - Mon 06:00' is open all Sunday and closes Monday 06:00 local."""
    params = {"timezone": BERLIN, "allow": ["Fri 22:00 - Mon 06:00"]}
    result = await run(params, make_ctx(utc(2026, 6, 14, 12, 0)))
    assert (result.status, result.evidence["opening_end"]) == (
        CheckStatus.PASS,
        utc(2026, 6, 15, 4).isoformat(),
    )


def test_night_window_on_spring_forward_night_is_an_hour_shorter() -> None:
    """'Sat 22:00-06:00' over the spring-forward night ends 06:00 CEST: 7 real hours, not 8."""
    params = parse({"timezone": BERLIN, "allow": ["Sat 22:00-06:00"]})
    assert opening_end(params, utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 29, 4, 0)
    assert next_opening(params, utc(2026, 3, 29, 12, 0)) == Opening(
        utc(2026, 4, 4, 20, 0), utc(2026, 4, 5, 4, 0)
    )


# --- freezes with times, time zones per entry ---------------------------------------------------


def test_freeze_forms() -> None:
    """Dates are inclusive; times are local and the end is exclusive; the two may be mixed."""
    day = datetime(2026, 12, 24, 12, 0)
    assert (
        parse_freeze("2026-12-24T12:00/2026-12-27T08:00").start,
        parse_freeze("2026-12-24T12:00/2026-12-27T08:00").end,
    ) == (day, datetime(2026, 12, 27, 8, 0))
    assert parse_freeze("2026-12-24T12:00/2026-12-26").end == datetime(2026, 12, 27)
    assert parse_freeze("2026-12-24 12:00/2026-12-24 18:30").end == datetime(2026, 12, 24, 18, 30)
    assert parse_freeze("2026-12-20/2027-01-04").end == datetime(2027, 1, 5)


async def test_timed_freeze_waits_until_its_end_time() -> None:
    """A freeze from Dec 24 12:00 to Dec 27 08:00 blocks 13:00 and reopens at 08:00 local."""
    params = {"timezone": BERLIN, "freeze": ["2026-12-24T12:00/2026-12-27T08:00"]}
    before = await run(params, make_ctx(utc(2026, 12, 24, 10, 0)))  # 11:00 CET
    assert (before.status, before.evidence["opening_end"]) == (
        CheckStatus.PASS,
        utc(2026, 12, 24, 11).isoformat(),
    )
    inside = await run(params, make_ctx(utc(2026, 12, 24, 12, 0)))  # 13:00 CET
    assert (inside.status, inside.retry_after, inside.reason) == (
        CheckStatus.WAIT,
        utc(2026, 12, 27, 7, 0),
        "2026-12-24 13:00 Europe/Berlin is inside the freeze 2026-12-24T12:00/2026-12-27T08:00",
    )
    assert inside.evidence["freeze"] == span(
        "2026-12-24T12:00/2026-12-27T08:00", utc(2026, 12, 24, 11), utc(2026, 12, 27, 7)
    )


async def test_one_rule_mixes_time_zones() -> None:
    """A New York window and a Berlin window in one rule: each is read in its own zone."""
    params = {
        "timezone": BERLIN,
        "allow": [
            "Mon-Fri 09:00-12:00",
            {"window": "Mon-Fri 09:00-17:00", "timezone": "America/New_York"},
        ],
        "freeze": [{"freeze": "2026-06-16", "timezone": "America/New_York", "name": "NY offsite"}],
    }
    gap = await run(params, make_ctx(utc(2026, 6, 15, 12, 30)))  # 14:30 Berlin, 08:30 New York
    assert (gap.status, gap.retry_after, gap.reason) == (
        CheckStatus.WAIT,
        utc(2026, 6, 15, 13, 0),
        "Mon 14:30 Europe/Berlin is outside the allowed windows Mon-Fri 09:00-12:00, "
        "Mon-Fri 09:00-17:00 (America/New_York)",
    )
    new_york = await run(params, make_ctx(utc(2026, 6, 15, 20, 0)))  # 16:00 New York
    assert (new_york.status, new_york.reason) == (
        CheckStatus.PASS,
        "Mon 22:00 Europe/Berlin is inside the allowed window Mon-Fri 09:00-17:00 (America/New_York)",
    )
    # The New York freeze covers Tuesday 00:00-24:00 New York = 04:00 Tue - 04:00 Wed UTC, so the
    # Berlin window of Wednesday 09:00 (07:00 UTC) is the next opening.
    frozen = await run(params, make_ctx(utc(2026, 6, 16, 8, 0)))
    assert (frozen.status, frozen.retry_after) == (CheckStatus.WAIT, utc(2026, 6, 17, 7, 0))
    assert frozen.reason == (
        "2026-06-16 10:00 Europe/Berlin is inside the freeze NY offsite (America/New_York)"
    )
    assert frozen.evidence["freeze"] == span(
        "NY offsite", utc(2026, 6, 16, 4), utc(2026, 6, 17, 4), timezone="America/New_York"
    )


# --- public holidays ----------------------------------------------------------------------------


async def test_public_holiday_freezes_the_whole_local_day() -> None:
    """Labour Day in Berlin (Fri 2026-05-01) is frozen; the next opening is Monday 09:00."""
    params = {
        "timezone": BERLIN,
        "allow": ["Mon-Fri 09:00-16:00"],
        "freeze_holidays": {"country": "DE", "subdivision": "BE"},
    }
    result = await run(params, make_ctx(utc(2026, 5, 1, 8, 0)))
    assert (result.status, result.retry_after, result.reason) == (
        CheckStatus.WAIT,
        utc(2026, 5, 4, 7, 0),
        "2026-05-01 10:00 Europe/Berlin is inside the freeze 'Labor Day' (holidays DE-BE)",
    )
    assert result.evidence["freeze"] == span(
        "Labor Day", utc(2026, 4, 30, 22), utc(2026, 5, 1, 22), source="holidays DE-BE"
    )


def test_holiday_freezes_for_a_country_and_year() -> None:
    """Every public holiday of Berlin in 2026 is one frozen local day, and nothing else is."""
    params = parse(
        {"timezone": BERLIN, "freeze_holidays": [{"country": "DE", "subdivision": "BE"}]}
    )
    schedule = build_schedule(params, utc(2025, 12, 31, 23, 0), days=365)
    frozen = [
        (s.what, s.start.astimezone(params.zone).date().isoformat(), s.end - s.start)
        for s in schedule.freezes
        if s.start.astimezone(params.zone).year == 2026
    ]
    day = timedelta(days=1)
    assert frozen == [
        ("New Year's Day", "2026-01-01", day),
        ("Women's Day", "2026-03-08", day),
        ("Good Friday", "2026-04-03", day),
        ("Easter Monday", "2026-04-06", day),
        ("Labor Day", "2026-05-01", day),
        ("Ascension Day", "2026-05-14", day),
        ("Pentecost Monday", "2026-05-25", day),
        ("German Unity Day", "2026-10-03", day),
        ("Christmas Day", "2026-12-25", day),
        ("Second Day of Christmas", "2026-12-26", day),
    ]


async def test_several_holiday_sources_and_observed_days() -> None:
    """A list of countries: the US observes Independence Day 2026 on Friday July 3."""
    params = {
        "timezone": "America/New_York",
        "freeze_holidays": [{"country": "DE", "subdivision": "BE"}, {"country": "US"}],
    }
    result = await run(params, make_ctx(utc(2026, 7, 3, 15, 0)))
    assert (result.status, result.retry_after) == (CheckStatus.WAIT, utc(2026, 7, 5, 4, 0))
    assert result.evidence["freeze"]["what"] == "Independence Day (observed)"
    assert (await run(params, make_ctx(utc(2026, 7, 6, 15, 0)))).status is CheckStatus.PASS


def test_unknown_holiday_country_or_subdivision_is_a_params_error() -> None:
    """The holidays package's refusal is the params error, located at the entry."""
    problems = params_errors(
        ChangeWindow(),
        {
            "timezone": BERLIN,
            "freeze_holidays": [{"country": "XX"}, {"country": "DE", "subdivision": "ZZ"}],
        },
    )
    assert problems == [
        "params.freeze_holidays.0: holidays: Country XX not available",
        "params.freeze_holidays.1: holidays: Entity `DE` does not have subdivision ZZ",
    ]


# --- the pure questions: next opening of a length, end of the current opening, intersection -----


def test_next_opening_of_a_minimum_length_skips_short_openings() -> None:
    """A one-hour gap before a freeze is too short for a two-hour wave; the afternoon is not."""
    params = parse({**WEEKDAYS, "freeze": ["2026-06-15T10:00/2026-06-15T11:00"]})
    after = utc(2026, 6, 15, 6, 0)  # Mon 08:00 CEST
    assert next_opening(params, after) == Opening(utc(2026, 6, 15, 7), utc(2026, 6, 15, 8))
    assert next_opening(params, after, timedelta(hours=2)) == Opening(
        utc(2026, 6, 15, 9), utc(2026, 6, 15, 14)
    )
    assert next_opening(params, after, timedelta(hours=8)) is None  # no window is that long


def test_opening_end_inside_closed_and_unbounded() -> None:
    """Inside: when it closes; closed: the instant itself; never closing: None."""
    params = parse({**WEEKDAYS, "freeze": ["2026-06-15T10:00/2026-06-15T11:00"]})
    assert opening_end(params, utc(2026, 6, 15, 7, 30)) == utc(2026, 6, 15, 8, 0)
    assert opening_end(params, utc(2026, 6, 15, 8, 30)) == utc(2026, 6, 15, 8, 30)
    assert opening_end(parse({"timezone": "UTC"}), utc(2026, 6, 15)) is None


def test_intersection_of_two_rules_first_overlaps_in_a_later_week() -> None:
    """Two rules whose next openings never overlap until the third Monday: that is the answer."""
    berlin = parse(
        {"timezone": BERLIN, "allow": ["Mon 09:00-10:00"], "freeze": ["2026-06-22"]}
    )  # 07:00-08:00 UTC on Mondays, but not June 22
    new_york = parse(
        {"timezone": "America/New_York", "allow": ["Mon 03:30-04:30"], "freeze": ["2026-06-15"]}
    )  # 07:30-08:30 UTC on Mondays, but not June 15
    after = utc(2026, 6, 13, 12, 0)
    singles = [next_opening(berlin, after), next_opening(new_york, after)]
    assert [o.start for o in singles if o] == [utc(2026, 6, 15, 7), utc(2026, 6, 22, 7, 30)]
    rules = [build_schedule(p, after).openings for p in (berlin, new_york)]
    assert earliest_common_opening(rules, after) == Opening(
        utc(2026, 6, 29, 7, 30), utc(2026, 6, 29, 8, 0)
    )
    assert earliest_common_opening(rules, after, timedelta(minutes=31)) is None
    assert intersect(*rules)[:2] == [
        Opening(utc(2026, 6, 29, 7, 30), utc(2026, 6, 29, 8, 0)),
        Opening(utc(2026, 7, 6, 7, 30), utc(2026, 7, 6, 8, 0)),
    ]


async def test_result_openings_read_back_for_the_intersection() -> None:
    """The openings a result lists read back into the same intersection the schedules give."""
    after = utc(2026, 6, 13, 12, 0)
    first = await run({**WEEKDAYS, "freeze": ["2026-06-15/2026-06-17"]}, make_ctx(after))
    second = await run({"timezone": "UTC", "allow": ["Wed-Fri 12:00-13:00"]}, make_ctx(after))
    lists = [[Opening.from_evidence(p) for p in r.evidence["openings"]] for r in (first, second)]
    assert earliest_common_opening(lists, after) == Opening(
        utc(2026, 6, 18, 12), utc(2026, 6, 18, 13)
    )


def test_search_horizon_is_documented_constant() -> None:
    """The horizon a schedule covers is SEARCH_DAYS; an opening reaching it has no end."""
    schedule = build_schedule(parse({"timezone": "UTC"}), utc(2026, 1, 1))
    assert (schedule.end - schedule.start, schedule.openings) == (
        timedelta(days=SEARCH_DAYS),
        [Opening(utc(2026, 1, 1), None)],
    )


def test_a_windows_days_are_laid_out_once_and_kept_as_laid_out() -> None:
    """The same rule and local days give the same schedule without laying 400 days out again."""
    from guardrails.builtin.change_window import rules

    params = parse({"timezone": BERLIN, "allow": ["Mon-Fri 09:00-16:00", "Sun 01:30-03:30"]})
    after = utc(2026, 10, 20, 9)  # the horizon crosses the end of summer time, 2026-10-25
    rules._window_spans.cache_clear()
    first = build_schedule(params, after)
    assert rules._window_spans.cache_info().misses == 2  # one per window
    again = build_schedule(params, after + timedelta(hours=3))  # the same local days
    assert rules._window_spans.cache_info().misses == 2
    assert rules._window_spans.cache_info().hits == 2
    rules._window_spans.cache_clear()
    afresh = build_schedule(params, after + timedelta(hours=3))
    assert again.allows == afresh.allows == first.allows
    assert [(s.what, s.source, s.timezone) for s in again.allows] == [
        (s.what, s.source, s.timezone) for s in afresh.allows
    ]
    # 01:30-03:30 on the night clocks fall back (03:00 → 02:00) lasts three hours, once.
    assert Span(utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 2, 30)) in first.allows
