"""The gate loop: run the guardrail gate until it says proceed, waiting, blocking or expiring.

Deterministic workflow code, composed into ``GuardedChange``. A :class:`GateLoop` runs the
``GuardrailGate`` child, records each report (status, ledger), and between runs waits for what the
report asks: the gate's ``retry_after``, an approval that covers every failure (I1), an operator's
recheck, or the change's deadline. It also gives back the target locks the change holds.
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    import workflows.ids as ids
    import workflows.observe as observe
    from workflows.approvals import approvable, still_needed
    from workflows.change_run import ChangeRun
    from workflows.gate import GuardrailGateWorkflow
    from workflows.models import (
        AuditAction,
        Category,
        ChangeContext,
        Decision,
        GateInput,
        GuardrailReport,
        LoadDirectoryInput,
        Phase,
        ReleaseLocksInput,
    )
    from workflows.paging import Pager
    from workflows.report import approver_groups, ledger_checks, scheduled_for
    from workflows.summaries import day_clock, line, window_wait_summary

DUE_WAIT_PATCH = "due-wait-regates"
"""``workflow.patched`` id: a gate's ``wait`` whose time already came gates again (it was taken
for the deadline having passed, and the change ended rejected)."""
DUE_WAIT_REGATE = timedelta(seconds=1)
"""How soon a change gates again after a ``wait`` that came due while its gate ran."""
UNANSWERED_PATCH = "unanswered-block-regates"
"""``workflow.patched`` id: a ``block`` made only of checks that could not answer (``error``, with
at most ``wait``s beside them) gates again by itself, with backoff, instead of waiting for a
recheck until the deadline (chaos finding 11: a change held its locks, and three changes queued
behind it, for a day after one check timed out during a server restart)."""
UNANSWERED_FIRST = timedelta(seconds=30)
"""The first automatic re-gate after a block of unanswered checks; each next one waits twice as
long, up to :data:`UNANSWERED_LONGEST`."""
UNANSWERED_LONGEST = timedelta(minutes=10)
UNANSWERED_REGATES = 12
"""Automatic re-gates before the change stops trying by itself (about 85 minutes) and pages."""
LOCKS_TOUCHED_PATCH = "release-touched-locks"
"""``workflow.patched`` id: an ending change signals lock workflows only if a gate of it ran a
concurrency check (which may have queued it) or failed; before, every ending change signalled one
``release`` per target, 10,000 RPCs for a 10,000-target change that never locked anything."""
REGATE_CATEGORIES = [Category.TIMING, Category.CONCURRENCY, Category.IN_FLIGHT]
"""Re-checked before every wave after the first: the world may have caught fire mid-rollout."""


def queued_only(report: GuardrailReport) -> bool:
    """True when the report only waits on concurrency (a lock queue), nothing else stops it."""
    stopping = [c for c in report.checks if c.mode.value == "enforce" and not c.passing]
    return bool(stopping) and all(
        c.category is Category.CONCURRENCY and c.status.value == "wait" for c in stopping
    )


def unanswered_only(report: GuardrailReport) -> bool:
    """True when a ``block`` comes only from checks that could not answer: no check *failed*.

    Every enforced, non-passing check is an ``error`` (fail-closed: a timeout, a dependency
    down) or a ``wait``, and at least one is an ``error``. Such a block says "we do not know",
    which is worth asking again; a ``fail`` says "no", which only a fix and a recheck change.
    """
    stopping = [c for c in report.checks if c.mode.value == "enforce" and not c.passing]
    statuses = {c.status.value for c in stopping}
    return (
        report.decision is Decision.BLOCK and "error" in statuses and statuses <= {"error", "wait"}
    )


class GateLoop:
    """Gate a change until it may proceed; hold and give back its target locks."""

    def __init__(self, change: ChangeRun, pager: Pager) -> None:
        self._change = change
        self._pager = pager
        self._holds_locks = False
        self._touched_locks = False  # a gate of this change ran a concurrency check, or failed
        self._unanswered = 0  # automatic re-gates since the last report that was not unanswered

    def _regate_unanswered(
        self, report: GuardrailReport, now: datetime, deadline: datetime
    ) -> datetime | None:
        """When a block of unanswered checks gates again by itself; ``None``: it does not."""
        if not unanswered_only(report):
            self._unanswered = 0
            return None
        if self._unanswered >= UNANSWERED_REGATES:
            return None
        again = now + min(UNANSWERED_FIRST * (1 << self._unanswered), UNANSWERED_LONGEST)
        if again >= deadline or not workflow.patched(UNANSWERED_PATCH):
            return None
        self._unanswered += 1
        return again

    async def until_proceed(
        self, ctx: ChangeContext, deadline: datetime, *, categories: list[Category] | None
    ) -> GuardrailReport | None:
        """Gate until it says proceed; ``None`` when the deadline passes first."""
        change, status = self._change, self._change.status
        while True:
            change.set_phase(Phase.GATING, "running the guardrail gate")
            report = await self._run_gate(ctx, categories)
            if report.decision is Decision.PROCEED:
                return report
            if categories is None and not queued_only(report):
                # Before the first mutation, a change that cannot go on must not hold its targets;
                # mid-rollout it keeps them, since they are half-changed. A change that only waits
                # in a lock queue keeps the locks handed to it, or it would lose its turn.
                await self.release_locks()
            now = workflow.now()
            if report.decision is Decision.WAIT and report.retry_after is not None:
                if report.retry_after >= deadline:
                    status.message = (
                        f"the gate asks to wait until {report.retry_after.isoformat()}, "
                        f"after the deadline {deadline.isoformat()}"
                    )
                    await self.deadline_passed()
                    return None
                change.set_phase(
                    Phase.WAITING,
                    f"waiting until {report.retry_after.isoformat()} to gate again "
                    f"({scheduled_for(report.retry_after, report.retry_zone)})",
                )
                status.retry_after, status.retry_zone = report.retry_after, report.retry_zone
                until = report.retry_after
                timer = window_wait_summary(until, report)
            else:
                names = ", ".join(c.rule_id for c in report.failures)
                again = self._regate_unanswered(report, now, deadline)
                by_itself = (
                    f"; it gates again by itself at {day_clock(again)} (a check could not answer; "
                    f"automatic re-gate {self._unanswered} of {UNANSWERED_REGATES})"
                    if again is not None
                    else ""
                )
                if approvable(report):
                    change.directory = await calls.load_directory(
                        LoadDirectoryInput(change_id=change.change_id)
                    )
                    if self.covered(report):
                        return report  # every failure is covered by valid approvals (I1)
                    status.still_needed = still_needed(report, status.approvals, now)
                    change.set_phase(
                        Phase.AWAITING_APPROVAL,
                        f"blocked by {names}; awaiting approval of report {report.report_hash}"
                        + by_itself,
                        awaiting=approver_groups(report),
                    )
                else:
                    change.set_phase(
                        Phase.BLOCKED, f"blocked by {names}; fix the cause and recheck" + by_itself
                    )
                until = deadline
                awaited = "approval or recheck" if approvable(report) else "a recheck"
                timer = line(f"wait for {awaited} until {day_clock(deadline)}")
                if again is not None:
                    until = again
                    timer = line(f"gate again at {day_clock(again)}: a check could not answer")
                elif self._unanswered == UNANSWERED_REGATES and unanswered_only(report):
                    self._unanswered += 1  # page once, then wait for a person as before
                    await self._pager.page(
                        f"{change.change_id} is blocked: {names} could not answer through "
                        f"{UNANSWERED_REGATES} automatic re-gates; fix the cause and recheck"
                    )
            if until <= now and until < deadline and workflow.patched(DUE_WAIT_PATCH):
                # A wait that came due while the gate ran (a slow gate): gate again shortly.
                until = now + DUE_WAIT_REGATE
            if until <= now:
                status.message = f"the deadline {deadline.isoformat()} passed"
                await self.deadline_passed()
                return None
            covered = functools.partial(self.covered, report)
            woke = await change.wait(
                lambda: change.recheck or covered(),  # noqa: B023 (awaited in this iteration)
                until - now,
                summary=timer,
            )
            if not woke and until >= deadline:
                status.message = f"the gate did not pass before the deadline {deadline.isoformat()}"
                await self.deadline_passed()
                return None
            if not change.recheck and covered():
                return report
            change.recheck = False

    async def _run_gate(
        self, ctx: ChangeContext, categories: list[Category] | None
    ) -> GuardrailReport:
        change, status = self._change, self._change.status
        status.gate_runs += 1
        touched, self._touched_locks = self._touched_locks, True  # a failed gate may have queued
        report = await workflow.execute_child_workflow(
            GuardrailGateWorkflow.run,
            GateInput(change=ctx, policy=change.request.policy, categories=categories),
            id=ids.gate_id(change.change_id, status.gate_runs),
            static_summary=f"gate {status.gate_runs}"
            + (f": {', '.join(c.value for c in categories)}" if categories else ": every rule"),
        )
        # A re-check before a wave covers only some categories: it replaces the full report
        # only when it is what now stops the change.
        if categories is None or report.decision is not Decision.PROCEED:
            status.report = report
        if any(c.category is Category.CONCURRENCY and c.passing for c in report.checks):
            self._holds_locks = True
        self._touched_locks = touched or any(
            c.category is Category.CONCURRENCY for c in report.checks
        )
        status.last_gate = report
        observe.gate_decided(report, regate=categories is not None)
        workflow.set_current_details(change.details())
        await change.audit(
            AuditAction.GATE,
            "changeguard",
            reason=f"gate {status.gate_runs}: {report.decision.value}",
            report_hash=report.report_hash,
            policy_hash=report.bundle_hash or report.policy_hash,
            detail={
                "decision": report.decision.value,
                "failing": [c.rule_id for c in report.failures][:50],
                "waiting": [c.rule_id for c in report.checks if c.status.value == "wait"][:50],
                "categories": [c.value for c in categories] if categories else "all",
                "effective_policy_hash": report.policy_hash,
                # Per rule: status, mode, latency; shadow failures are what would have blocked.
                "shadow_failing": [
                    c.rule_id
                    for c in report.checks
                    if c.mode.value == "shadow" and c.status.value in ("fail", "error")
                ][:50],
                "checks": ledger_checks(report),
            },
        )
        return report

    def covered(self, report: GuardrailReport) -> bool:
        """True when the report blocks only on failures that valid approvals cover."""
        return (
            report.decision is Decision.BLOCK
            and approvable(report)
            and not still_needed(report, self._change.status.approvals, workflow.now())
        )

    async def deadline_passed(self) -> None:
        """Audit (and, if the policy says so, page) a gate that did not pass before the deadline."""
        change = self._change
        await change.audit(AuditAction.DEADLINE, "changeguard", reason=change.status.message)
        if (await self._pager.policy()).page_on_reject:
            await self._pager.page(
                f"{change.change_id} did not pass its gate in time: {change.status.message}"
            )

    async def release_locks(self, *, ending: bool = False) -> None:
        """Give back every target lock this change holds; shielded, and never fails the change.

        ``ending``: the change is over, so it also leaves every lock queue it may wait in.
        """
        request = self._change.request
        if not request.targets or not (self._holds_locks or ending):
            return
        untouched = not self._holds_locks and not self._touched_locks
        if untouched and workflow.patched(LOCKS_TOUCHED_PATCH):
            return  # no gate of this change ran a lock check: no lock knows it
        self._holds_locks = False
        release = calls.release_target_locks(
            ReleaseLocksInput(
                change_id=self._change.change_id,
                target_ids=[t.id for t in request.targets],
                leave_queue=ending,
            )
        )
        try:
            await asyncio.shield(release)
        except (ActivityError, asyncio.CancelledError) as exc:
            # The locks' own watch expires them once this workflow has closed.
            workflow.logger.warning("releasing target locks failed", extra={"error": str(exc)})
