"""Approval rules, as pure functions the workflow and its update validator share.

What an approval covers (the rule documented in docs/approvals.md):

- An approval names failing rules of one report (``report_hash``), by rule id (which is the
  guardrail's name unless the policy gives the rule its own ``id``), and is accepted only while
  that report is the change's current one.
- It keeps the *failure signature* of that report: which rules failed, and how.
- A later report (a recheck, or the re-check before a wave) is covered by earlier approvals only
  while its failures are a subset of the approved signature, each with the same status, and only
  until the approvals expire. A new failure, or a failure whose status changed, needs a new
  approval bound to the new report.
- Each approvable failure needs ``required`` distinct, unexpired approvers from its groups.
- A ``forbidden`` failure can never be approved (invariant I2).
"""

from __future__ import annotations

from datetime import datetime

from workflows.models import (
    Approval,
    CheckResult,
    Directory,
    GrantedApproval,
    GuardrailReport,
    OptOut,
)


def signature(report: GuardrailReport) -> dict[str, str]:
    """The failures of a report: rule id → status."""
    return {c.rule_id: c.status.value for c in report.failures}


def approval_problem(
    approval: Approval,
    *,
    report: GuardrailReport | None,
    awaiting: bool,
    directory: Directory | None,
    requester: str,
    granted: list[GrantedApproval],
    now: datetime,
) -> str | None:
    """Why an approval must be refused, or ``None`` when it is acceptable.

    The reason is shown to the caller (the update validator's error, the Web UI included) and
    recorded in the audit trail, so it names the fix.
    """
    if report is not None:
        # A forbidden failure is refused as such in every phase (I2): the reason names the fix.
        for failure in report.failures:
            if failure.rule_id in approval.guardrails and failure.opt_out is OptOut.FORBIDDEN:
                return (
                    f"{failure.rule_id} is forbidden to opt out of; fix the cause instead: "
                    f"{failure.remedy}"
                )
    if not awaiting or report is None:
        return "the change is not awaiting approval; nothing can be approved now"
    if approval.report_hash != report.report_hash:
        return (
            f"report_hash {approval.report_hash!r} is stale: approvals bind to the current report "
            f"{report.report_hash!r} (see `changeguard status`)"
        )
    if directory is None:
        return "the operator directory is not loaded yet; retry in a moment"
    failing = {c.rule_id: c for c in report.failures}
    groups = set(directory.groups_of(approval.approver))
    if not groups:
        return f"approver {approval.approver!r} is not in the operator directory"
    for name in approval.guardrails:
        check = failing.get(name)
        if check is None:
            if any(c.rule_id == name for c in report.checks):
                return f"{name} is not failing: there is nothing to approve"
            return f"{name} is not a check of this report (failing: {', '.join(failing) or 'none'})"
        problem = _rule_problem(check, approval, groups, requester)
        if problem:
            return problem
        if any(
            g.guardrail == name and g.approver == approval.approver and g.expires_at > now
            for g in granted
        ):
            return f"{approval.approver} has already approved {name}; a second approver is needed"
    return None


def _rule_problem(
    check: CheckResult, approval: Approval, groups: set[str], requester: str
) -> str | None:
    name, rule = check.rule_id, check.approval
    if check.opt_out is OptOut.FORBIDDEN:
        return f"{name} is forbidden to opt out of; fix the cause instead: {check.remedy}"
    if rule is None:
        return f"{name} has no approval rule in the policy; nobody can approve it"
    if not groups & set(rule.approvers):
        return (
            f"{approval.approver} is not in the approver groups of {name} "
            f"({', '.join(rule.approvers)})"
        )
    if rule.distinct_from_requester and approval.approver == requester:
        return f"four eyes: {requester} requested this change and cannot approve {name}"
    return None


def grant(approval: Approval, *, report: GuardrailReport, now: datetime) -> list[GrantedApproval]:
    """The grants an accepted approval creates, one per rule, expiry capped by policy."""
    failing = {c.rule_id: c for c in report.failures}
    out = []
    for name in approval.guardrails:
        rule = failing[name].approval
        assert rule is not None
        lifetime = min(approval.expires_in, rule.max_duration)
        out.append(
            GrantedApproval(
                guardrail=name,
                approver=approval.approver,
                reason=approval.reason,
                report_hash=report.report_hash,
                approved_at=now,
                expires_at=now + lifetime,
                signature=signature(report),
            )
        )
    return out


def still_needed(
    report: GuardrailReport, granted: list[GrantedApproval], now: datetime
) -> dict[str, int]:
    """Approvals each failure of ``report`` still lacks; empty when every failure is covered.

    A forbidden failure, or one without a rule, can never be covered and is reported as needing
    one approval (that no one can give).
    """
    sig = signature(report)
    needed: dict[str, int] = {}
    for check in report.failures:
        rule = check.approval
        if check.opt_out is OptOut.FORBIDDEN or rule is None:
            needed[check.rule_id] = 1
            continue
        approvers = {
            g.approver
            for g in granted
            if g.guardrail == check.rule_id
            and g.expires_at > now
            and sig.items() <= g.signature.items()
        }
        missing = rule.required - len(approvers)
        if missing > 0:
            needed[check.rule_id] = missing
    return needed


def approvable(report: GuardrailReport) -> bool:
    """True when every failure could be approved by someone."""
    return bool(report.failures) and all(
        c.opt_out is OptOut.APPROVABLE and c.approval is not None for c in report.failures
    )
