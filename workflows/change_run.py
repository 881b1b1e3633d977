"""What the parts of one ``GuardedChange`` run share: its request and status, and the primitives on them.

Deterministic workflow code. The workflow builds one :class:`ChangeRun` and hands it to each of its
collaborators (the gate loop, the wave-timing planner, the wave runner, the bake monitor, the
compensation and the approval desk), so every part receives the state it uses explicitly. The
operator's handlers set ``stop``, ``resumed`` and ``recheck``; every wait goes through
:meth:`ChangeRun.wait`, which an operator's abort or rollback ends.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    import workflows.observe as observe
    import workflows.search_attributes as sa
    from workflows.details import change_details
    from workflows.models import (
        AuditAction,
        AuditRecord,
        ChangeRequest,
        ChangeStatus,
        Directory,
        Phase,
    )
    from workflows.summaries import line
    from workflows.types import excerpt
    from workflows.unwind import Unwind, failure_of

MAX_RECORDED = 20
"""Refused approvals, pages and audit failures kept in the status (older ones are dropped)."""


def keep_last(items: list[Any], limit: int = MAX_RECORDED) -> None:
    """Drop the oldest entries beyond ``limit`` (the status must stay small: I10)."""
    del items[: max(0, len(items) - limit)]


class ChangeRun:
    """One change's request, status and operator flags; its phase, waits and ledger records."""

    def __init__(self, change_id: str, request: ChangeRequest) -> None:
        self.change_id = change_id
        self.request = request
        self.status = ChangeStatus(change_id=change_id, kind=request.kind)
        self.stop: Unwind | None = None  # set by the abort / rollback updates
        # What the change is ending with, once abort and rollback are refused: "" (not ending),
        # "rollout" (its last wave is over) or "rejected" (its gate did not pass in time).
        self.completing: Literal["", "rollout", "rejected"] = ""
        self.resumed = False  # set by the resume update while paused
        self.recheck = False  # set by the recheck signal
        self.directory: Directory | None = None  # the operators, loaded when approvals are due
        self._audit_seq = 0
        self._phase_since: datetime | None = None  # when the current phase began (metrics)

    def set_phase(self, phase: Phase, message: str, *, awaiting: list[str] | None = None) -> None:
        """Enter ``phase`` with ``message``; the search attributes change only with the phase."""
        status = self.status
        changed = phase is not status.phase or (awaiting or []) != status.awaiting_from
        if phase is not status.phase:
            self._phase_since = observe.phase_ended(status.phase, self._phase_since)
        status.retry_after = None  # set again by whoever waits (gate, wave timing)
        status.phase = phase
        status.message = message
        status.awaiting_from = awaiting or []
        status.updated_at = workflow.now()
        workflow.set_current_details(self.details())
        if not changed:
            return  # a new message alone needs no search-attribute upsert (a history event)
        workflow.upsert_search_attributes(
            [
                sa.CHANGE_PHASE.value_set(phase.value),
                sa.AWAITING_APPROVAL_FROM.value_set(status.awaiting_from)
                if status.awaiting_from
                else sa.AWAITING_APPROVAL_FROM.value_unset(),
            ]
        )

    def details(self) -> str:
        """The Web UI's current details of the change."""
        return change_details(self.change_id, self.status)

    async def wait(
        self, condition: Callable[[], bool], limit: timedelta | None, *, summary: str | None = None
    ) -> bool:
        """Wait for ``condition`` or ``limit`` (False), or raise when an operator stopped us.

        ``summary`` names the timer in the Web UI's timeline.
        """
        try:
            await workflow.wait_condition(
                lambda: self.stop is not None or condition(),
                timeout=limit,
                timeout_summary=summary if limit is not None else None,
            )
        except TimeoutError:
            return False
        finally:
            if self.stop is not None:
                raise self.stop
        return True

    async def audit(self, action: AuditAction, actor: str, **fields: object) -> None:
        """Write one audit record (idempotent by its id) before going on."""
        self._audit_seq += 1
        info = workflow.info()
        report = self.status.report
        fields.setdefault("report_hash", report.report_hash if report else "")
        fields.setdefault(
            "policy_hash", (report.bundle_hash or report.policy_hash) if report else ""
        )
        record = AuditRecord(
            record_id=f"{self.change_id}:{info.run_id}:{self._audit_seq}",
            action=action,
            actor=actor,
            at=workflow.now(),
            change_id=self.change_id,
            run_id=info.run_id,
            **fields,
        )
        await calls.record_audit(record, summary=line(f"record {action.value} in the ledger"))

    async def audit_from_signal(self, action: AuditAction, actor: str, **fields: object) -> None:
        """Audit from a signal handler: a failure is recorded in status, never fails the change.

        (An exception escaping a signal handler would fail the whole run, uncompensated.)
        """
        try:
            await self.audit(action, actor, **fields)
        except ActivityError as exc:
            message, _ = failure_of(exc)
            self.status.audit_failures.append(excerpt(f"{action.value} by {actor}: {message}", 500))
            keep_last(self.status.audit_failures)
            workflow.logger.error(f"audit write failed: {message}")
