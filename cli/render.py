"""Human output: rich tables for reports and status, one JSON document for ``--json``."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table
from rich.text import Text

from workflows.models import ChangeStatus, CheckStatus, Decision, GuardrailReport, Outcome
from workflows.report_view import NO_CHECKS, report_view, scheduled_for

console = Console()
err = Console(stderr=True)

_STATUS_STYLE = {
    CheckStatus.PASS: "green",
    CheckStatus.FAIL: "bold red",
    CheckStatus.WAIT: "yellow",
    CheckStatus.ERROR: "bold magenta",
}
_DECISION_STYLE = {
    Decision.PROCEED: "bold green",
    Decision.WAIT: "bold yellow",
    Decision.BLOCK: "bold red",
}


def print_json(model: BaseModel | dict[str, object]) -> None:
    """Print one JSON document on stdout."""
    data = model.model_dump(mode="json") if isinstance(model, BaseModel) else model
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def report_table(report: GuardrailReport) -> Table:
    """The report as a table: one row per rule, failures explained, the bundle named."""
    view = report_view(report)
    title = Text.assemble(
        "Guardrail report: ", (view.decision.value, _DECISION_STYLE[view.decision])
    )
    caption = Text(
        f"report {view.report_hash} · policy {view.policy_hash} · bundle {view.bundle_hash}"
    )
    if view.bundle_warning:
        caption.append(f"\npolicy bundle: {view.bundle_warning}", style="bold yellow")
    if view.retry_after is not None:
        caption.append("\n" + scheduled(view.retry_after, view.retry_zone), style="yellow")
    table = Table(title=title, caption=caption, show_lines=True, expand=True)
    table.add_column("rule", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("reason", ratio=3)
    table.add_column("remedy", ratio=3)
    table.add_column("owner", no_wrap=True)
    table.add_column("opt-out")
    for row in view.rows:
        status = Text(row.status.value, style=_STATUS_STYLE[row.status])
        if row.shadow:
            status.append(" (shadow)", style="dim")
        table.add_row(row.label, status, row.reason, row.remedy, row.owner, row.opt_out)
    if not view.rows:
        table.add_row("—", "", NO_CHECKS, "", "", "")
    return table


def scheduled(instant: datetime, zone: str = "") -> str:
    """``scheduled for 2026-05-04 09:00 Europe/Berlin (07:00 UTC)``: in the rules' zone."""
    try:
        local = instant.astimezone(ZoneInfo(zone)) if zone else None
    except (ZoneInfoNotFoundError, ValueError):
        local = None
    return scheduled_for(instant, zone, local=local)


def status_table(status: ChangeStatus, url: str) -> Table:
    """The status query as a key/value table."""
    table = Table(show_header=False, title=f"Change {status.change_id}")
    table.add_column(style="bold")
    table.add_column()
    outcome = status.outcome.value if status.outcome else "—"
    style = "green" if status.outcome is Outcome.COMPLETED else ("red" if status.outcome else "")
    table.add_row("phase", status.phase.value)
    table.add_row("outcome", Text(outcome, style=style))
    table.add_row("message", status.message)
    if status.retry_after is not None and status.outcome is None:
        table.add_row("scheduled", scheduled(status.retry_after, status.retry_zone))
    if status.awaiting_from:
        table.add_row("awaiting approval from", ", ".join(status.awaiting_from))
    if status.still_needed:
        needed = ", ".join(f"{g}: {n} more" for g, n in status.still_needed.items())
        report = status.report.report_hash if status.report else "?"
        table.add_row("approvals needed", f"{needed} (report {report})")
    for a in status.approvals:
        table.add_row(
            "approved",
            f"{a.guardrail} by {a.approver} until {a.expires_at:%Y-%m-%d %H:%M} UTC: {a.reason}",
        )
    for r in status.rejected_approvals:
        table.add_row(Text("refused approval", style="red"), f"{r.approver or '?'}: {r.why}")
    for w in status.waves:
        table.add_row(
            f"wave {w.index + 1}",
            f"{w.state}: {len(w.applied)}/{len(w.targets)} applied ({', '.join(w.targets)})",
        )
    if status.reverted:
        table.add_row("reverted", ", ".join(status.reverted))
    for f in status.compensation_failures:
        table.add_row(Text("compensation failed", style="red"), f"{f.step}: {f.error}")
    for reading in status.signals:
        value = "" if reading.value is None else f" ({reading.value:g})"
        table.add_row(
            f"signal {reading.signal}", f"{reading.state}{value} {reading.detail}".strip()
        )
    for page in status.pages:
        table.add_row("paged", page)
    for failure in status.audit_failures:
        table.add_row(Text("audit failed", style="red"), failure)
    for work in status.pending:
        retry = f", next try in {work.next_attempt_in_s:.0f}s" if work.next_attempt_in_s else ""
        failure = f": last failure {work.last_failure}" if work.last_failure else ""
        note = f" — {work.note}" if work.note else ""
        style = "red" if work.suspicious or work.stalled else "yellow" if work.last_failure else ""
        target = f" {work.target}" if work.target else ""
        table.add_row(
            Text(f"pending {work.activity}{target}", style=style),
            f"{work.state.lower()}, attempt {work.attempt}{retry}{failure}{note}",
        )
    for refused in status.refused_signals:
        table.add_row(Text("refused signal", style="red"), refused)
    if status.needs_repair:
        table.add_row(Text("needs a human", style="red"), ", ".join(status.needs_repair))
    table.add_row("gate runs", str(status.gate_runs))
    table.add_row("web UI", url)
    return table
