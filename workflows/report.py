"""Pure functions that turn check results into one report, hash it, and render it for the Web UI.

Deterministic and free of I/O, so the gate workflow, the CLI and tests share them. What each check
says comes from the one report view (:mod:`workflows.report_view`); the markdown only lays it out.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from workflows.models import (
    Category,
    CheckResult,
    CheckStatus,
    Decision,
    GuardrailReport,
    Mode,
    OptOut,
)
from workflows.report_view import (
    NO_CHECKS,
    CheckRow,
    check_reason,
    report_view,
    rule_label,
    scheduled_for,
    who_may_approve,
)
from workflows.spans import Opening, earliest_common_opening

__all__ = [
    "aggregate",
    "approver_groups",
    "check_block",
    "check_reason",
    "earliest_opening",
    "ledger_checks",
    "report_hash",
    "report_markdown",
    "rule_label",
    "scheduled_for",
    "who_may_approve",
]


def report_hash(checks: list[CheckResult], policy_hash: str) -> str:
    """A stable digest of which checks do not pass, and how, that an approval binds to.

    Reasons, evidence and timings are left out: they may carry the clock ("Sat 10:00 is outside
    the window"), and the same failures re-evaluated a minute later must give the same hash, or
    every recheck would make approvals stale. The policy hash is in: a new policy is a new report.
    """
    material = [
        {
            "g": c.rule_id,
            "s": c.status.value,
            "m": c.mode.value,
        }
        for c in checks
        if not c.passing
    ]
    digest = hashlib.sha256(
        json.dumps({"p": policy_hash, "c": material}, sort_keys=True).encode()
    ).hexdigest()
    return digest[:16]


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


def approver_groups(report: GuardrailReport) -> list[str]:
    """Groups that could approve every blocking failure, or empty if any failure is forbidden."""
    failures = report.failures
    if not failures or any(c.opt_out is OptOut.FORBIDDEN or not c.approvers for c in failures):
        return []
    return sorted({g for c in failures for g in c.approvers})


def _plain(text: str) -> str:
    """One line of markdown text: no line breaks, no table or HTML syntax that would reflow it."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;")


def check_block(check: CheckResult | CheckRow) -> list[str]:
    """One non-passing check as a short block: rule, status, why, to pass, owner, who may approve.

    Short lines that wrap (no table), so it fits a 1280 px Web UI panel whatever the text.
    """
    row = CheckRow.of(check) if isinstance(check, CheckResult) else check
    shadow = " · shadow: would have blocked, decides nothing" if row.shadow else ""
    return [
        f"#### {row.status.value.upper()} · {_plain(row.label)}{shadow}",
        "",
        f"- **why:** {_plain(row.reason) or '(no reason given)'}",
        f"- **to pass:** {_plain(row.remedy) or '(no remedy given)'}",
        f"- **owner:** {_plain(row.owner) or '(none)'}",
        f"- **who may approve:** {_plain(row.who_may_approve)}",
        "",
    ]


def report_markdown(report: GuardrailReport, *, title: str = "Guardrail report") -> str:
    """The report for the Web UI's current details: each non-passing check as a short block."""
    view = report_view(report)
    lines = [
        f"### {title}: **{view.decision.value}**",
        "",
        f"- evaluated {view.evaluated_at.isoformat(timespec='seconds')}",
        f"- report `{view.report_hash}`",
        f"- policy `{view.policy_hash}` · bundle `{view.bundle_hash}`",
        "",
    ]
    if view.bundle_warning:
        lines += [f"> ⚠️ **policy bundle:** {_plain(view.bundle_warning)}", ""]
    if view.scheduled():
        lines += [f"⏳ **{view.scheduled()}**", ""]
    if not view.rows:
        lines.append(f"_{NO_CHECKS.capitalize()}._")
        return "\n".join(lines)
    for row in view.failing:
        lines += check_block(row)
    if view.passing:
        lines.append(f"**passing ({len(view.passing)}):** {_plain(', '.join(view.passing))}")
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
