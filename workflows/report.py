"""Pure functions that turn check results into one report, and render it for the Web UI.

Deterministic and free of I/O, so the gate workflow, the CLI and tests share them.
"""

from __future__ import annotations

from datetime import datetime

from workflows.models import (
    CheckResult,
    CheckStatus,
    Decision,
    GuardrailReport,
    Mode,
    OptOut,
    report_hash,
)

_ICON = {
    CheckStatus.PASS: "✅ pass",
    CheckStatus.FAIL: "❌ fail",
    CheckStatus.WAIT: "⏳ wait",
    CheckStatus.ERROR: "⚠️ error",
}


def aggregate(checks: list[CheckResult], *, policy_hash: str, now: datetime) -> GuardrailReport:
    """Draw the one decision from every result.

    Any enforced ``fail`` or ``error`` blocks; else any enforced ``wait`` waits until the earliest
    ``retry_after``; else the change may proceed. Shadow checks never decide.
    """
    enforced = [c for c in checks if c.mode is Mode.ENFORCE]
    retry_after = None
    if any(c.status in (CheckStatus.FAIL, CheckStatus.ERROR) for c in enforced):
        decision = Decision.BLOCK
    elif waits := [c for c in enforced if c.status is CheckStatus.WAIT]:
        decision = Decision.WAIT
        times = [c.retry_after for c in waits if c.retry_after is not None]
        retry_after = min(times) if times else None
    else:
        decision = Decision.PROCEED
    return GuardrailReport(
        decision=decision,
        report_hash=report_hash(checks, policy_hash),
        evaluated_at=now,
        checks=checks,
        policy_hash=policy_hash,
        retry_after=retry_after,
    )


def approver_groups(report: GuardrailReport) -> list[str]:
    """Groups that could approve every blocking failure, or empty if any failure is forbidden."""
    failures = report.failures
    if not failures or any(c.opt_out is OptOut.FORBIDDEN or not c.approvers for c in failures):
        return []
    return sorted({g for c in failures for g in c.approvers})


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report_markdown(report: GuardrailReport, *, title: str = "Guardrail report") -> str:
    """The report as a markdown table, for the Web UI's current details."""
    lines = [
        f"### {title}: **{report.decision.value}**",
        "",
        f"evaluated {report.evaluated_at.isoformat(timespec='seconds')} · "
        f"report `{report.report_hash}` · policy `{report.policy_hash or 'none'}`",
        "",
    ]
    if not report.checks:
        lines.append("_No guardrail applies to this change._")
        return "\n".join(lines)
    lines += [
        "| guardrail | status | reason | remedy | owner | opt-out |",
        "|---|---|---|---|---|---|",
    ]
    for c in report.checks:
        status = _ICON[c.status] + (" (shadow)" if c.mode is Mode.SHADOW else "")
        opt = c.opt_out.value + (f" by {', '.join(c.approvers)}" if c.approvers else "")
        lines.append(
            f"| {c.guardrail} | {status} | {_cell(c.reason)} | {_cell(c.remedy)} "
            f"| {c.owner} | {opt if not c.passing else ''} |"
        )
    return "\n".join(lines)
