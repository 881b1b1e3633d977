"""Pure functions that turn check results into one report, and render it for the Web UI.

Deterministic and free of I/O, so the gate workflow, the CLI and tests share them.
"""

from __future__ import annotations

from datetime import UTC, datetime

from guardrails.builtin.change_window.spans import Opening, earliest_common_opening
from workflows.models import (
    Category,
    CheckResult,
    CheckStatus,
    Decision,
    GuardrailReport,
    Mode,
    OptOut,
    report_hash,
)
from workflows.types import format_duration


def aggregate(
    checks: list[CheckResult],
    *,
    policy_hash: str,
    now: datetime,
    bundle_hash: str = "",
    bundle_warning: str = "",
    common_opening: bool = False,
) -> GuardrailReport:
    """Draw the one decision from every result.

    Any enforced ``fail`` or ``error`` blocks; else any enforced ``wait`` waits until the earliest
    ``retry_after``; else the change may proceed. Shadow checks never decide. The bundle's hash and
    warning (a refused edit) are carried into the report.

    With ``common_opening`` (the gate's ``workflow.patched`` branch), the timing rules that list
    their openings (``change-window``) answer together: their ``retry_after`` is the earliest
    instant at which all of them are open at once (:func:`earliest_opening`), not the earliest of
    their single openings, at which another of them may still be closed.
    """
    enforced = [c for c in checks if c.mode is Mode.ENFORCE]
    retry_after = None
    zone = ""
    if any(c.status in (CheckStatus.FAIL, CheckStatus.ERROR) for c in enforced):
        decision = Decision.BLOCK
    elif waits := [c for c in enforced if c.status is CheckStatus.WAIT]:
        decision = Decision.WAIT
        timed = _with_openings(enforced) if common_opening else []
        if any(c.status is CheckStatus.WAIT for c in timed):
            waits = [c for c in waits if c not in timed]
            zone = next(_zone(c) for c in timed if c.status is CheckStatus.WAIT)
        times = [c.retry_after for c in waits if c.retry_after is not None]
        if any(c.status is CheckStatus.WAIT for c in timed):
            times.append(earliest_opening(timed, now))
        retry_after = min(times) if times else None
        if not zone:
            zone = next((_zone(c) for c in waits if c.retry_after == retry_after), "")
    else:
        decision = Decision.PROCEED
    return GuardrailReport(
        decision=decision,
        report_hash=report_hash(checks, policy_hash),
        evaluated_at=now,
        checks=checks,
        policy_hash=policy_hash,
        retry_after=retry_after,
        retry_zone=zone,
        bundle_hash=bundle_hash,
        bundle_warning=bundle_warning,
    )


def _zone(check: CheckResult) -> str:
    zone = check.evidence.get("timezone", "") if isinstance(check.evidence, dict) else ""
    return zone if isinstance(zone, str) else ""


def _openings(check: CheckResult) -> list[Opening] | None:
    """A timing result's listed openings, or None when it lists none (or they do not read)."""
    listed = check.evidence.get("openings") if isinstance(check.evidence, dict) else None
    if check.category is not Category.TIMING or not isinstance(listed, list):
        return None
    try:
        return [Opening.from_evidence(pair) for pair in listed]
    except (TypeError, ValueError):
        return None


def _with_openings(checks: list[CheckResult]) -> list[CheckResult]:
    return [
        c
        for c in checks
        if c.status in (CheckStatus.PASS, CheckStatus.WAIT) and _openings(c) is not None
    ]


def _until(check: CheckResult, now: datetime) -> datetime:
    """How far a result's openings are complete (``openings_until``), else ``now``."""
    text = check.evidence.get("openings_until")
    try:
        return datetime.fromisoformat(text) if isinstance(text, str) else now
    except ValueError:
        return now


def earliest_opening(timed: list[CheckResult], now: datetime) -> datetime:
    """The earliest instant at which every timing result's openings overlap.

    When they do not overlap within what every result lists (``openings_until``), no common
    opening lies before the shortest list's end, nor before the latest single ``retry_after``:
    the later of those two is when to gate again.
    """
    lists = [_openings(c) or [] for c in timed]
    found = earliest_common_opening(lists, now)
    horizon = min(_until(c, now) for c in timed)
    if found is not None and found.start < horizon:
        return found.start
    singles = [c.retry_after for c in timed if c.retry_after is not None]
    return max([horizon, *singles])


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


def approver_groups(report: GuardrailReport) -> list[str]:
    """Groups that could approve every blocking failure, or empty if any failure is forbidden."""
    failures = report.failures
    if not failures or any(c.opt_out is OptOut.FORBIDDEN or not c.approvers for c in failures):
        return []
    return sorted({g for c in failures for g in c.approvers})


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


def _plain(text: str) -> str:
    """One line of markdown text: no line breaks, no table or HTML syntax that would reflow it."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


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


def check_block(check: CheckResult) -> list[str]:
    """One non-passing check as a short block: rule, status, why, to pass, owner, who may approve.

    Short lines that wrap (no table), so it fits a 1280 px Web UI panel whatever the text.
    """
    shadow = " · shadow: would have blocked, decides nothing" if check.mode is Mode.SHADOW else ""
    return [
        f"#### {check.status.value.upper()} · {_plain(rule_label(check))}{shadow}",
        "",
        f"- **why:** {_plain(check_reason(check)) or '(no reason given)'}",
        f"- **to pass:** {_plain(check.remedy) or '(no remedy given)'}",
        f"- **owner:** {_plain(check.owner) or '(none)'}",
        f"- **who may approve:** {_plain(who_may_approve(check))}",
        "",
    ]


def report_markdown(report: GuardrailReport, *, title: str = "Guardrail report") -> str:
    """The report for the Web UI's current details: each non-passing check as a short block."""
    lines = [
        f"### {title}: **{report.decision.value}**",
        "",
        f"- evaluated {report.evaluated_at.isoformat(timespec='seconds')}",
        f"- report `{report.report_hash}`",
        f"- policy `{report.policy_hash or 'none'}` · bundle `{report.bundle_hash or 'none'}`",
        "",
    ]
    if report.bundle_warning:
        lines += [f"> ⚠️ **policy bundle:** {_plain(report.bundle_warning)}", ""]
    if report.decision is Decision.WAIT and report.retry_after is not None:
        lines += [f"⏳ **{scheduled_for(report.retry_after, report.retry_zone)}**", ""]
    if not report.checks:
        lines.append("_No guardrail applies to this change._")
        return "\n".join(lines)
    for c in report.checks:
        if not c.passing:
            lines += check_block(c)
    passing = [rule_label(c) for c in report.checks if c.passing]
    if passing:
        lines.append(f"**passing ({len(passing)}):** {_plain(', '.join(passing))}")
    return "\n".join(lines).rstrip()


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
