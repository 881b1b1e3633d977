"""One earliest-start answer: the gate's retry_after is when every timing rule is open together."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from rich.console import Console
from temporalio.testing import WorkflowEnvironment

from cli.render import report_table, scheduled
from guardrails.base import CheckContext
from guardrails.builtin.change_window import ChangeWindow
from worker.main import build_worker
from workflows.models import (
    Category,
    ChangeContext,
    CheckResult,
    CheckSpec,
    CheckStatus,
    Decision,
    GateInput,
    GuardrailReport,
    Target,
)
from workflows.report import aggregate, report_markdown

BERLIN_RULE = {"timezone": "Europe/Berlin", "allow": ["Mon 09:00-10:00"], "freeze": ["2026-06-22"]}
"""07:00-08:00 UTC on Mondays, but not June 22."""
NEW_YORK_RULE = {
    "timezone": "America/New_York",
    "allow": ["Mon 03:30-04:30"],
    "freeze": ["2026-06-15"],
}
"""07:30-08:30 UTC on Mondays, but not June 15."""


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def change(deadline: datetime | None = None) -> ChangeContext:
    return ChangeContext(
        change_id="chg-1",
        kind="recording",
        environment="prod",
        team="payments",
        requester="alice",
        targets=[Target(id="t1")],
        deadline=deadline,
    )


async def judge(rule: str, params: dict[str, Any], now: datetime) -> CheckResult:
    spec = CheckSpec(
        rule=rule, guardrail="change-window", category=Category.TIMING, owner="release-eng"
    )
    guardrail = ChangeWindow()
    result = await guardrail.check(
        guardrail.parse_params(params), CheckContext(change=change(), spec=spec, now=now)
    )
    return result.model_copy(update={"rule": rule})


async def test_report_retry_after_is_the_first_common_opening_weeks_later() -> None:
    """Two rules' single openings (June 15, June 22) never overlap until June 29: that is retry_after."""
    now = utc(2026, 6, 13, 12)
    berlin = await judge("berlin", BERLIN_RULE, now)
    new_york = await judge("new-york", NEW_YORK_RULE, now)
    assert [berlin.retry_after, new_york.retry_after] == [
        utc(2026, 6, 15, 7),
        utc(2026, 6, 22, 7, 30),
    ]

    old = aggregate([berlin, new_york], policy_hash="p", now=now)
    new = aggregate([berlin, new_york], policy_hash="p", now=now, common_opening=True)
    assert (old.decision, old.retry_after) == (Decision.WAIT, utc(2026, 6, 15, 7))
    assert (new.decision, new.retry_after, new.retry_zone) == (
        Decision.WAIT,
        utc(2026, 6, 29, 7, 30),
        "Europe/Berlin",
    )
    assert new.report_hash == old.report_hash  # the answer is not what an approval binds to
    assert "⏳ **scheduled for 2026-06-29 07:30 UTC (rules in Europe/Berlin)**" in report_markdown(
        new
    )


async def test_a_passing_rule_that_closes_before_the_other_opens_counts_too() -> None:
    """A rule open now but closed when the waiting one opens pushes retry_after to both's overlap."""
    now = utc(2026, 6, 15, 7, 10)  # Berlin's Monday window is open; New York's is frozen today
    berlin = await judge("berlin", {**BERLIN_RULE, "freeze": []}, now)
    new_york = await judge("new-york", NEW_YORK_RULE, now)
    assert (berlin.status, new_york.status) == (CheckStatus.PASS, CheckStatus.WAIT)
    report = aggregate([berlin, new_york], policy_hash="p", now=now, common_opening=True)
    assert report.retry_after == utc(2026, 6, 22, 7, 30)


async def test_no_overlap_within_the_listed_openings_retries_at_the_lists_end() -> None:
    """Openings that never overlap within what the results list: gate again when the lists end."""
    now = utc(2026, 6, 13, 12)
    monday = await judge("monday", {"timezone": "UTC", "allow": ["Mon 07:00-08:00"]}, now)
    tuesday = await judge("tuesday", {"timezone": "UTC", "allow": ["Tue 07:00-08:00"]}, now)
    report = aggregate([monday, tuesday], policy_hash="p", now=now, common_opening=True)
    assert report.retry_after == datetime.fromisoformat(monday.evidence["openings_until"])
    assert report.retry_after == now + timedelta(days=28)


def test_cli_shows_scheduled_for_in_the_rules_zone() -> None:
    """The CLI says 'scheduled for <local time> <zone> (<UTC>)' under a waiting report."""
    assert scheduled(utc(2026, 6, 29, 7, 30), "Europe/Berlin") == (
        "scheduled for 2026-06-29 09:30 Europe/Berlin (07:30 UTC)"
    )
    assert scheduled(utc(2026, 6, 29, 23, 30), "Europe/Berlin") == (
        "scheduled for 2026-06-30 01:30 Europe/Berlin (2026-06-29 23:30 UTC)"
    )
    assert scheduled(utc(2026, 6, 29, 7, 30)) == "scheduled for 2026-06-29 07:30 UTC"
    report = GuardrailReport(
        decision=Decision.WAIT,
        report_hash="h",
        evaluated_at=utc(2026, 6, 13),
        checks=[],
        retry_after=utc(2026, 6, 29, 7, 30),
        retry_zone="Europe/Berlin",
    )
    console = Console(record=True, width=160)
    console.print(report_table(report))
    assert "scheduled for 2026-06-29 09:30 Europe/Berlin (07:30 UTC)" in console.export_text()


def _freeze(today: date, *ranges: tuple[int, int]) -> dict[str, Any]:
    """A UTC rule frozen on days (today + first … today + last), both inclusive."""

    def day(offset: int) -> str:
        return (today + timedelta(days=offset)).isoformat()

    return {"timezone": "UTC", "freeze": [f"{day(a)}/{day(b)}" for a, b in ranges]}


async def test_gate_reports_the_common_opening_of_two_rules_a_week_later(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """Through the gate: open on day 2 and day 3 alone, together from day 8: retry_after is day 8."""
    today = (await env.get_current_time()).astimezone(UTC).date()  # the server's clock
    rules = [
        {"id": "freeze-a", "use": "change-window", "params": _freeze(today, (0, 1), (3, 7))},
        {"id": "freeze-b", "use": "change-window", "params": _freeze(today, (0, 2), (4, 7))},
    ]
    async with build_worker(env.client, task_queue=task_queue):
        report = await env.client.execute_workflow(
            "GuardrailGate",
            GateInput(change=change(), policy={"guardrails": rules}),
            id=f"gate-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            result_type=GuardrailReport,
        )
    singles = sorted(c.retry_after for c in report.checks if c.retry_after)
    assert singles == [_midnight(today + timedelta(days=2)), _midnight(today + timedelta(days=3))]
    assert (report.decision, report.retry_after) == (
        Decision.WAIT,
        _midnight(today + timedelta(days=8)),
    )


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)
