"""The CLI's exit codes: part of the public contract (docs/design.md)."""

from __future__ import annotations

from rich.markup import escape

from cli.render import err
from workflows.models import Decision, Outcome, Phase

OK = 0
"""Completed, or the gate proceeds, or the change is still running fine."""
UNDONE = 1
"""Rolled back, aborted, or failed."""
INVALID = 2
"""Invalid input: nothing was started."""
BLOCKED = 3
"""Blocked, awaiting approval, or rejected by the gate (a change waiting for its window is running
fine: ``status`` exits 0 for it, ``checks`` exits 3 because the gate would not proceed now)."""
UNREACHABLE = 4
"""Temporal could not be reached (or the audit store), or the change cannot answer now: the server
refuses it while its workflow task is being retried (:func:`changeguard.client.not_ready`)."""


def for_outcome(outcome: Outcome) -> int:
    """Exit code of a finished change."""
    if outcome is Outcome.COMPLETED:
        return OK
    if outcome is Outcome.REJECTED:
        return BLOCKED
    return UNDONE


def for_phase(phase: Phase) -> int:
    """Exit code for a change seen in ``phase`` (running phases are OK)."""
    if phase in (Phase.BLOCKED, Phase.AWAITING_APPROVAL, Phase.REJECTED):
        return BLOCKED
    if phase in (Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED):
        return UNDONE
    return OK


def for_decision(decision: Decision) -> int:
    """Exit code of ``changeguard checks``: 0 only when the gate would proceed now."""
    return OK if decision is Decision.PROCEED else BLOCKED


def fail(what: str, message: str, code: int = INVALID) -> int:
    """Print ``what`` in bold red and ``message`` (markup escaped) on stderr; return ``code``."""
    err.print(f"[bold red]{what}[/] {escape(message)}")
    return code
