"""The change-window guardrail: windows, freezes, deadlines and daylight saving."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from guardrails.base import CheckContext, new_registry, params_errors
from guardrails.builtin.change_window import ChangeWindow, ChangeWindowParams, parse_window
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
        evidence={
            "timezone": BERLIN,
            "local_time": "2026-06-11T10:00:00+02:00",
            "next_opening": None,
        },
    )


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
        evidence={
            "timezone": BERLIN,
            "local_time": "2026-06-13T10:00:00+02:00",
            "next_opening": monday.isoformat(),
        },
    )


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
    assert params.freeze == ["2026-12-25"]


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
            "allow": ["Mon-Thu 09:00-16:00", "Mon-Thx 09:00-16:00", "Fri 17:00-09:00"],
            "freeze": ["2026-12-40"],
        },
    )
    assert problems == [
        "params.timezone: unknown time zone 'Mars/Base'; use an IANA name such as "
        "'Europe/Berlin' or 'UTC'",
        "params.allow.1: 'Mon-Thx 09:00-16:00': 'Thx' is not a day; "
        "use Mon, Tue, Wed, Thu, Fri, Sat, Sun",
        "params.allow.2: 'Fri 17:00-09:00': the window must end after it starts; split windows "
        "that cross midnight, e.g. 'Fri 22:00-24:00' and 'Sat 00:00-02:00'",
        "params.freeze.0: '2026-12-40' is not a freeze; write a date '2026-12-25' or an "
        "inclusive range '2026-12-20/2027-01-04'",
    ]


def test_params_require_timezone_and_forbid_unknown_fields() -> None:
    """A missing time zone and a misspelt field are both reported."""
    problems = params_errors(ChangeWindow(), {"allow": [], "frezee": []})
    assert problems == [
        "params.timezone: Field required",
        "params.frezee: Extra inputs are not permitted",
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
