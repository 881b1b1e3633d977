"""One view of a gate report, computed once, that every renderer of a report formats.

The Web UI's markdown (:func:`workflows.report.report_markdown`), the CLI's table
(:func:`cli.render.report_table`) and the demo's report (:func:`demo.narration.show_report`) read
the same :class:`ReportView`: the decision line, the hashes, the bundle warning, when a waiting
change gates again, and one :class:`CheckRow` per check (rule, status, why, what would pass, owner,
who may approve). What a row says is decided here; a renderer only lays it out.

Pure and deterministic: standard library and our leaf models only (no rich, yaml, httpx), so
workflow code renders with it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from workflows.models import CheckResult, CheckStatus, Decision, GuardrailReport, Mode, OptOut
from workflows.types import format_duration

NO_CHECKS = "no guardrail applies to this change"
"""What a report without checks says, in every view."""


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


def who_may_approve(check: CheckResult) -> str:
    """``sre-leads (1 approval, not the requester, up to 4h)``, or why nobody may."""
    if check.mode is Mode.SHADOW:
        return "nobody needs to: a shadow rule never blocks"
    if check.status is CheckStatus.WAIT:
        until = check.retry_after.isoformat(timespec="minutes") if check.retry_after else "later"
        return f"nobody needs to: the change waits and gates again ({until})"
    if check.opt_out is OptOut.FORBIDDEN or not check.approvers:
        return "nobody: this rule may not be opted out of; fix the cause, then recheck"
    terms = []
    rule = check.approval
    if rule is not None:
        terms.append(f"{rule.required} approval{'s' if rule.required != 1 else ''}")
        if rule.distinct_from_requester:
            terms.append("not the requester")
        terms.append(f"up to {format_duration(rule.max_duration)}")
    groups = ", ".join(check.approvers)
    return f"{groups} ({', '.join(terms)})" if terms else groups


def scheduled_for(instant: datetime, zone: str = "", *, local: datetime | None = None) -> str:
    """``scheduled for 2026-05-04 07:00 UTC`` (the rules' zone beside it when known).

    ``local``: the same instant already converted to ``zone`` (the CLI does that; workflow code
    reads no time-zone database), shown first.
    """
    utc = instant.astimezone(UTC)
    text = f"{utc:%Y-%m-%d %H:%M} UTC"
    if local is not None and zone and zone != "UTC":
        day = "%H:%M" if local.date() == utc.date() else "%Y-%m-%d %H:%M"
        return f"scheduled for {local:%Y-%m-%d %H:%M} {zone} ({utc.strftime(day)} UTC)"
    if zone and zone != "UTC":
        text += f" (rules in {zone})"
    return f"scheduled for {text}"


@dataclass(frozen=True)
class CheckRow:
    """One check as every view shows it.

    ``reason`` carries the platform's note (:func:`check_reason`); ``opt_out`` is the terse form
    (``approvable (sre-leads)``, ``forbidden``; empty for a passing check), ``who_may_approve`` the
    sentence (:func:`who_may_approve`).
    """

    label: str
    rule_id: str
    guardrail: str
    status: CheckStatus
    shadow: bool
    passing: bool
    reason: str
    remedy: str
    owner: str
    opt_out: str
    who_may_approve: str

    @classmethod
    def of(cls, check: CheckResult) -> CheckRow:
        """The row of one check result."""
        opt = check.opt_out.value + (f" ({', '.join(check.approvers)})" if check.approvers else "")
        return cls(
            label=rule_label(check),
            rule_id=check.rule_id,
            guardrail=check.guardrail,
            status=check.status,
            shadow=check.mode is Mode.SHADOW,
            passing=check.passing,
            reason=check_reason(check),
            remedy=check.remedy,
            owner=check.owner,
            opt_out="" if check.passing else opt,
            who_may_approve=who_may_approve(check),
        )


@dataclass(frozen=True)
class ReportView:
    """A gate report as every view shows it: the decision line, then one row per check."""

    decision: Decision
    evaluated_at: datetime
    report_hash: str
    policy_hash: str
    """The effective policy's hash, or ``none``."""
    bundle_hash: str
    """The platform bundle's hash, or ``none``."""
    bundle_warning: str
    """Why the worker still judges by an older bundle (a refused edit), or empty."""
    retry_after: datetime | None
    """When a waiting change gates again (only for the ``wait`` decision)."""
    retry_zone: str
    rows: tuple[CheckRow, ...]

    @property
    def failing(self) -> list[CheckRow]:
        """The rows that do not pass (fail, error, wait; shadow ones too), in report order."""
        return [r for r in self.rows if not r.passing]

    @property
    def passing(self) -> list[str]:
        """The labels of the rules that pass."""
        return [r.label for r in self.rows if r.passing]

    def scheduled(self, local: datetime | None = None) -> str:
        """``scheduled for …`` when the change waits for a time, else empty (see :func:`scheduled_for`)."""
        if self.retry_after is None:
            return ""
        return scheduled_for(self.retry_after, self.retry_zone, local=local)


def report_view(report: GuardrailReport) -> ReportView:
    """The view of one report; every renderer starts here."""
    waiting = report.decision is Decision.WAIT and report.retry_after is not None
    return ReportView(
        decision=report.decision,
        evaluated_at=report.evaluated_at,
        report_hash=report.report_hash,
        policy_hash=report.policy_hash or "none",
        bundle_hash=report.bundle_hash or "none",
        bundle_warning=report.bundle_warning,
        retry_after=report.retry_after if waiting else None,
        retry_zone=report.retry_zone,
        rows=tuple(CheckRow.of(c) for c in report.checks),
    )
