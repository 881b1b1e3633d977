"""The change's current details in the Web UI (User Metadata → Current Details), as markdown.

What an operator needs at first sight, in a panel 1280 px wide: the phase and why, each
non-passing check as a short block (:func:`workflows.report.report_markdown`), and, while the
change awaits approval, the exact ``approve`` payload with the current report hash, ready to paste
into the Web UI's *Send an Update* dialog (docs/operators.md). Pure and deterministic: the workflow
renders it on every phase change.
"""

from __future__ import annotations

import json

from workflows.models import ChangeStatus, GuardrailReport, OptOut, Phase
from workflows.report import report_markdown

APPROVER_PLACEHOLDER = "<your name>"
REASON_PLACEHOLDER = "<why it is safe to go ahead>"


def approve_payload(report: GuardrailReport, still_needed: dict[str, int]) -> dict[str, object]:
    """The ``approve`` update's JSON for the rules that still need approval of this report."""
    rules = sorted(still_needed) or sorted(
        {c.rule_id for c in report.failures if c.opt_out is OptOut.APPROVABLE}
    )
    return {
        "guardrails": rules,
        "approver": APPROVER_PLACEHOLDER,
        "reason": REASON_PLACEHOLDER,
        "report_hash": report.report_hash,
    }


def approve_block(report: GuardrailReport, still_needed: dict[str, int]) -> list[str]:
    """How to approve from the Web UI: the JSON, one field per line (it never scrolls sideways)."""
    payload = json.dumps(approve_payload(report, still_needed), indent=2, ensure_ascii=False)
    return [
        "### To approve",
        "",
        "More Actions → **Send an Update** → `approve`, paste this as Data, put your name and "
        "reason in, Submit (refused at once if you may not approve):",
        "",
        "```json",
        payload,
        "```",
        "",
    ]


def change_details(change_id: str, status: ChangeStatus) -> str:
    """The current details: phase and message, the approve payload when awaited, the report."""
    lines = [f"## {change_id}: {status.phase.value}", "", status.message, ""]
    report = status.report
    if report is not None and status.phase is Phase.AWAITING_APPROVAL:
        lines += approve_block(report, status.still_needed)
    if report is not None:
        lines.append(report_markdown(report))
    return "\n".join(lines).rstrip()
