"""The one report view: computed once, the same words in the Web UI markdown and the CLI table."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from cli.render import report_table
from demo import narration
from workflows import models
from workflows.models import CheckResult, CheckStatus, Decision, GuardrailReport, OptOutRule
from workflows.report import aggregate, report_hash, report_markdown
from workflows.report_view import NO_CHECKS, report_view

NOW = datetime(2026, 12, 5, 10, 0, tzinfo=UTC)


def _check(rule: str, status: str = "fail", **kw: Any) -> CheckResult:
    return CheckResult.model_validate(
        {"rule": rule, "guardrail": "change-window", "category": "timing", "status": status, **kw}
    )


def _text(report: GuardrailReport) -> str:
    console = Console(record=True, width=240)
    console.print(report_table(report))
    return console.export_text()


CHECKS = [
    CheckResult.model_validate(d)
    for d in [
        {"rule": "freeze", "guardrail": "change-window", "category": "timing", "status": "fail"},
        {"guardrail": "fleet-health", "category": "health", "status": "pass"},
        {
            "rule": "canary",
            "guardrail": "fleet-health",
            "category": "health",
            "status": "error",
            "mode": "shadow",
        },
        {"guardrail": "maintenance", "category": "timing", "status": "wait", "reason": "Sat"},
    ]
]


def test_report_hash_is_unchanged_by_its_move_beside_the_report() -> None:
    """The same failures and policy give the hash they gave in workflows/models (approvals bind)."""
    assert report_hash(CHECKS, "p123") == "38b0a29f84f46327"
    assert report_hash([], "") == "2065667313f30507"
    assert models.report_hash(CHECKS, "p123") == "38b0a29f84f46327"  # the old import still works
    assert aggregate(CHECKS, policy_hash="p123", now=NOW).report_hash == "38b0a29f84f46327"


def test_each_row_says_why_what_passes_who_owns_and_who_may_approve() -> None:
    """A row carries the reason with the platform note, the terse opt-out and the sentence."""
    report = aggregate(
        [
            _check(
                "business-hours",
                reason="Sat 10:00 is outside the window",
                note="opened up for web",
                remedy="wait for Mon 09:00",
                owner="release-eng",
                approvers=["sre-leads"],
                approval=OptOutRule(approvers=["sre-leads"]),
            ),
            _check("env", opt_out="forbidden"),
            _check("ok", "pass", approvers=["sre-leads"]),
        ],
        policy_hash="",
        now=NOW,
    )
    view = report_view(report)
    first, forbidden, ok = view.rows
    assert first.label == "business-hours (change-window)"
    assert first.reason == "Sat 10:00 is outside the window (platform note: opened up for web)"
    assert (first.remedy, first.owner, first.opt_out) == (
        "wait for Mon 09:00",
        "release-eng",
        "approvable (sre-leads)",
    )
    assert first.who_may_approve == "sre-leads (1 approval, not the requester, up to 4h)"
    assert forbidden.opt_out == "forbidden"
    assert forbidden.who_may_approve.startswith("nobody: this rule may not be opted out of")
    assert ok.passing and ok.opt_out == ""
    assert [r.rule_id for r in view.failing] == ["business-hours", "env"]
    assert view.passing == ["ok (change-window)"]
    assert (view.policy_hash, view.bundle_hash) == ("none", "none")


def test_markdown_and_cli_table_show_the_same_rows_and_decision_line() -> None:
    """Both renderers show every failing row's reason and remedy and the same hashes."""
    report = aggregate(
        [_check("a", reason="too early", remedy="wait"), _check("b", "pass")],
        policy_hash="",
        now=NOW,
        bundle_hash="bh",
        bundle_warning="an edit was refused",
    )
    markdown, table = report_markdown(report), _text(report)
    for text in ("too early", "wait", report.report_hash, "an edit was refused"):
        assert text in markdown and text in table
    assert "policy `none` · bundle `bh`" in markdown
    assert f"report {report.report_hash} · policy none · bundle bh" in table  # was "policy  ·"
    assert "**block**" in markdown and "Guardrail report: block" in table


def test_the_demo_shows_the_rows_the_web_ui_and_cli_show() -> None:
    """The demo's report says the same why, fix, owner and who may approve as the markdown."""
    report = aggregate(
        [
            _check("freeze", reason="frozen", note="n", remedy="wait it out", owner="sre"),
            _check("ok", "pass"),
        ],
        policy_hash="p",
        now=NOW,
        bundle_warning="an edit was refused",
    )
    with narration.console.capture() as captured:
        narration.show_report(report)
    shown, markdown = " ".join(captured.get().split()), report_markdown(report)
    row = report_view(report).rows[0]
    for text in (row.reason, row.remedy, row.who_may_approve, "an edit was refused"):
        assert text in shown and text in markdown
    assert f"gate report {report.report_hash} decided block (platform bundle none)" in shown
    assert "✓ ok (change-window) pass" in shown


def test_waiting_and_empty_reports_read_alike_everywhere() -> None:
    """The scheduled-for line is only under a wait; a report without checks says so."""
    wait = _check("w", "wait", retry_after=datetime(2026, 12, 7, 9, tzinfo=UTC))
    waiting = aggregate([wait], policy_hash="p", now=NOW)
    assert waiting.decision is Decision.WAIT
    assert report_view(waiting).scheduled() == "scheduled for 2026-12-07 09:00 UTC"
    assert "⏳ **scheduled for 2026-12-07 09:00 UTC**" in report_markdown(waiting)
    assert "scheduled for 2026-12-07 09:00 UTC" in _text(waiting)
    blocked = aggregate([wait, _check("f")], policy_hash="p", now=NOW)
    assert report_view(blocked).scheduled() == "" and "scheduled" not in _text(blocked)
    empty = aggregate([], policy_hash="p", now=NOW)
    assert report_view(empty).rows == ()
    assert "_No guardrail applies to this change._" in report_markdown(empty)
    assert NO_CHECKS in _text(empty)
    assert all(r.status is CheckStatus.WAIT for r in report_view(waiting).failing)


def test_the_view_loads_nothing_workflow_code_may_not() -> None:
    """Importing the view (in a fresh interpreter) loads no rich, yaml, httpx or structlog."""
    probe = (
        "import sys, workflows.report_view; "
        "print(sorted(m for m in ('rich', 'yaml', 'httpx', 'structlog') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
