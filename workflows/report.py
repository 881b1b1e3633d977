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


def aggregate(
    checks: list[CheckResult],
    *,
    policy_hash: str,
    now: datetime,
    bundle_hash: str = "",
    bundle_warning: str = "",
) -> GuardrailReport:
    """Draw the one decision from every result.

    Any enforced ``fail`` or ``error`` blocks; else any enforced ``wait`` waits until the earliest
    ``retry_after``; else the change may proceed. Shadow checks never decide. The bundle's hash and
    warning (a refused edit) are carried into the report.
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
        bundle_hash=bundle_hash,
        bundle_warning=bundle_warning,
    )


def approver_groups(report: GuardrailReport) -> list[str]:
    """Groups that could approve every blocking failure, or empty if any failure is forbidden."""
    failures = report.failures
    if not failures or any(c.opt_out is OptOut.FORBIDDEN or not c.approvers for c in failures):
        return []
    return sorted({g for c in failures for g in c.approvers})


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rule_label(check: CheckResult) -> str:
    """The rule id, with the plug-in name beside it where the two differ."""
    rule = check.rule_id
    return rule if rule == check.guardrail else f"{rule} ({check.guardrail})"


def check_reason(check: CheckResult) -> str:
    """The check's reason, and the platform's note where it relaxed a floor rule."""
    if not check.note:
        return check.reason
    note = f"platform note: {check.note}"
    return f"{check.reason} ({note})" if check.reason else note


def report_markdown(report: GuardrailReport, *, title: str = "Guardrail report") -> str:
    """The report as a markdown table, for the Web UI's current details."""
    lines = [
        f"### {title}: **{report.decision.value}**",
        "",
        f"evaluated {report.evaluated_at.isoformat(timespec='seconds')} · "
        f"report `{report.report_hash}` · policy `{report.policy_hash or 'none'}` · "
        f"bundle `{report.bundle_hash or 'none'}`",
        "",
    ]
    if report.bundle_warning:
        lines += [f"> ⚠️ **policy bundle:** {_cell(report.bundle_warning)}", ""]
    if not report.checks:
        lines.append("_No guardrail applies to this change._")
        return "\n".join(lines)
    lines += [
        "| rule | status | reason | remedy | owner | opt-out |",
        "|---|---|---|---|---|---|",
    ]
    for c in report.checks:
        status = _ICON[c.status] + (" (shadow)" if c.mode is Mode.SHADOW else "")
        opt = c.opt_out.value + (f" by {', '.join(c.approvers)}" if c.approvers else "")
        lines.append(
            f"| {_cell(rule_label(c))} | {status} | {_cell(check_reason(c))} | {_cell(c.remedy)} "
            f"| {c.owner} | {opt if not c.passing else ''} |"
        )
    return "\n".join(lines)


LEDGER_CHECKS_MAX = 100
"""Checks a gate's ledger record lists one by one (the record stays well under its size limit)."""
LEDGER_REASON_MAX = 200


def ledger_checks(report: GuardrailReport) -> list[dict[str, object]]:
    """Each check of a report as the gate's ledger record keeps it (``changeguard report rules``).

    Rule, plug-in, status, mode (a ``shadow`` failure is what would have blocked), opt-out and the
    check's latency; a non-passing check keeps an excerpt of its reason. Bounded (I10).
    """
    out: list[dict[str, object]] = []
    for c in report.checks[:LEDGER_CHECKS_MAX]:
        entry: dict[str, object] = {
            "rule": c.rule_id[:128],
            "guardrail": c.guardrail[:128],
            "status": c.status.value,
            "mode": c.mode.value,
            "opt_out": c.opt_out.value,
            "ms": max(0, int(c.duration_ms)),
        }
        if not c.passing:
            entry["reason"] = " ".join(check_reason(c).split())[:LEDGER_REASON_MAX]
        out.append(entry)
    return out
