"""The ``GuardedChange`` workflow: gate, then apply in waves as a saga, then one terminal outcome.

Life of a change (DESIGN.md): validate → gate (child workflow) → wait for the window, or stay blocked
until an operator rechecks, until the deadline → apply wave by wave with bounded parallelism, each
mutation's compensation registered before it runs → bake → ``completed``. A failed mutation or a
cancellation unwinds every applied step in reverse (``rolled_back``, or ``failed`` when a
compensation itself failed).

Only failures Temporal reports (activity, child, cancellation, our ``ApplicationError``) unwind the
saga. A bug in this code fails the workflow *task* instead, which Temporal retries until a fixed
worker is deployed: nothing is compensated on the strength of a bug.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import datetime, timedelta

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from activities.change import ChangeActivities
    from activities.locks import LockActivities
    from workflows import errors
    from workflows import search_attributes as sa
    from workflows.approvals import approvable, approval_problem, grant, still_needed
    from workflows.bake import BakeMixin
    from workflows.batch import TargetBatchWorkflow
    from workflows.gate import GuardrailGateWorkflow
    from workflows.models import (
        TERMINAL_PHASES,
        Approval,
        ApprovalResult,
        AuditAction,
        AuditRecord,
        BatchInput,
        BatchResult,
        Category,
        ChangeContext,
        ChangeRequest,
        ChangeResult,
        ChangeStatus,
        Decision,
        Directory,
        GateInput,
        GuardrailReport,
        LoadDirectoryInput,
        OperatorAction,
        OperatorActionResult,
        Outcome,
        Phase,
        RecheckInput,
        RejectedApproval,
        ReleaseLocksInput,
        Target,
        ValidateChangeInput,
        WaveProgress,
        plan_waves,
    )
    from workflows.mutations import apply_targets
    from workflows.report import approver_groups, report_markdown
    from workflows.rollout_models import (
        RolloutPolicy,
    )
    from workflows.saga import Saga, failure_of

DEFAULT_DEADLINE = timedelta(hours=24)
BATCH_SIZE = 100
"""Waves larger than this run in ``TargetBatch`` children, keeping every history small."""
AUDIT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
)
REGATE_CATEGORIES = [Category.TIMING, Category.CONCURRENCY, Category.IN_FLIGHT]
"""Re-checked before every wave after the first: the world may have caught fire mid-rollout."""

_OUTCOME_PHASE = {
    Outcome.COMPLETED: Phase.COMPLETED,
    Outcome.ROLLED_BACK: Phase.ROLLED_BACK,
    Outcome.ABORTED: Phase.ABORTED,
    Outcome.REJECTED: Phase.REJECTED,
    Outcome.FAILED: Phase.FAILED,
}


class _Unwind(Exception):
    """Internal: stop the rollout and compensate (carries the outcome and why)."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


def _compensable(exc: BaseException) -> bool:
    """Failures that mean "the world said no", as opposed to a bug in workflow code."""
    # ValidationError: the workflow lists it in failure_exception_types so that undecodable input
    # fails the run at once; raised after mutations began, it must unwind like any failure.
    return isinstance(
        exc,
        asyncio.CancelledError
        | ActivityError
        | ChildWorkflowError
        | ApplicationError
        | ValidationError
        | _Unwind,
    )


@workflow.defn(name="GuardedChange", failure_exception_types=[ValidationError])
class GuardedChangeWorkflow(BakeMixin):
    """Run one change behind the guardrail gate, as a compensating saga in waves."""

    @workflow.init
    def __init__(self, request: ChangeRequest) -> None:
        self._request = request
        self._status = ChangeStatus(change_id=request.change_id, kind=request.kind)
        self._recheck = False
        self._saga = Saga()
        self._holds_locks = False
        self._directory: Directory | None = None
        self._stop: _Unwind | None = None  # set by the abort / rollback updates
        self._resumed = False  # set by the resume update while paused
        self._rollout: RolloutPolicy | None = None
        self._audit_seq = 0

    # ---------------------------------------------------------------- handlers

    @workflow.query(name="status")
    def status(self) -> ChangeStatus:
        """Where the change is, what it is waiting for, and what it has done."""
        return self._status

    @workflow.signal(name="recheck")
    async def recheck(self, inp: RecheckInput | None = None) -> None:
        """Run the gate again now (after an operator fixed a cause); the payload is optional."""
        inp = inp or RecheckInput()
        workflow.logger.info(f"recheck requested by {inp.requested_by or 'someone'}")
        self._recheck = True
        await self._audit_from_signal(
            AuditAction.RECHECK, inp.requested_by or "unknown", reason=inp.reason
        )

    @workflow.update(name="abort")
    async def abort(self, action: OperatorAction) -> OperatorActionResult:
        """Stop the change and undo everything applied (outcome ``aborted``); audited."""
        return await self._stop_with(AuditAction.ABORT, Outcome.ABORTED, action)

    @abort.validator
    def validate_abort(self, action: OperatorAction) -> None:
        """Refuse when the change is already ending."""
        self._refuse_if_ending("there is nothing to abort")

    @workflow.update(name="rollback")
    async def rollback(self, action: OperatorAction) -> OperatorActionResult:
        """Undo everything applied (outcome ``rolled_back``); only once mutations have begun."""
        return await self._stop_with(AuditAction.ROLLBACK, Outcome.ROLLED_BACK, action)

    @rollback.validator
    def validate_rollback(self, action: OperatorAction) -> None:
        """Refuse before any mutation (use abort) or when the change is already ending."""
        self._refuse_if_ending("there is nothing to roll back")
        if not self._status.applied:
            raise ApplicationError(
                "nothing has been applied yet; use abort to stop this change",
                type=errors.REFUSED,
                non_retryable=True,
            )

    @workflow.update(name="resume")
    async def resume(self, action: OperatorAction) -> OperatorActionResult:
        """Go on baking after a pause-and-page (the operator judged the signal harmless)."""
        await self._audit(AuditAction.RESUME, action.operator, reason=action.reason)
        self._resumed = True
        return OperatorActionResult(phase=self._status.phase, message="resuming the bake")

    @resume.validator
    def validate_resume(self, action: OperatorAction) -> None:
        """Only a paused change can be resumed."""
        if self._status.phase is not Phase.PAUSED or self._stop is not None:
            raise ApplicationError(
                f"the change is {self._status.phase.value}, not Paused; only a paused change "
                "can be resumed",
                type=errors.REFUSED,
                non_retryable=True,
            )

    def _unwind_with(self, outcome: Outcome, message: str) -> _Unwind:
        """The exception that stops the rollout and compensates (used by the bake)."""
        return _Unwind(outcome, message)

    def _refuse_if_ending(self, consequence: str) -> None:
        """Validators: refuse once the change is unwinding or over."""
        if (
            self._stop is not None
            or self._status.phase in TERMINAL_PHASES
            or self._status.phase is Phase.ROLLING_BACK
        ):
            raise ApplicationError(
                f"the change is already {self._status.phase.value}; {consequence}",
                type=errors.REFUSED,
                non_retryable=True,
            )

    async def _stop_with(
        self, audit: AuditAction, outcome: Outcome, action: OperatorAction
    ) -> OperatorActionResult:
        await self._audit(audit, action.operator, reason=action.reason)
        self._stop = _Unwind(outcome, f"{audit.value} by {action.operator}: {action.reason}")
        return OperatorActionResult(
            phase=self._status.phase, message=f"{audit.value} requested; unwinding"
        )

    async def _wait(self, condition: Callable[[], bool], limit: timedelta | None) -> bool:
        """Wait for ``condition`` or ``limit`` (False), or raise when an operator stopped us."""
        try:
            await workflow.wait_condition(
                lambda: self._stop is not None or condition(), timeout=limit
            )
        except TimeoutError:
            return False
        finally:
            if self._stop is not None:
                raise self._stop
        return True

    @workflow.update(name="approve")
    async def approve(self, approval: Approval) -> ApprovalResult:
        """Approve opt-outable failures of the current report (validated first; audited)."""
        return await self._accept(approval)

    @approve.validator
    def validate_approve(self, approval: Approval) -> None:
        """Refuse, with the reason the caller sees at once, what cannot be approved."""
        problem = self._approval_problem(approval)
        if problem:
            raise ApplicationError(problem, type=errors.REFUSED, non_retryable=True)

    @workflow.signal(name="approve_signal")
    async def approve_signal(self, approval: Approval) -> None:
        """The ``approve`` payload for clients that can only signal; refusals are recorded."""
        problem = self._approval_problem(approval)
        if problem is None:
            try:
                await self._accept(approval)
                return
            except ActivityError as exc:  # could not be audited: the approval is void
                problem = f"the approval could not be audited ({failure_of(exc)[0]}); send it again"
        rejected = RejectedApproval(approval=approval, why=problem, at=workflow.now())
        self._status.rejected_approvals.append(rejected)
        await self._audit_from_signal(
            AuditAction.APPROVAL_REJECTED,
            approval.approver,
            guardrail=",".join(approval.guardrails),
            reason=f"{problem} (their reason: {approval.reason})",
            report_hash=approval.report_hash,
        )

    def _approval_problem(self, approval: Approval) -> str | None:
        return approval_problem(
            approval,
            report=self._status.report,
            awaiting=self._status.phase is Phase.AWAITING_APPROVAL,
            directory=self._directory,
            requester=self._request.requester,
            granted=self._status.approvals,
            now=workflow.now(),
        )

    async def _accept(self, approval: Approval) -> ApprovalResult:
        report = self._status.report
        assert report is not None
        grants = grant(approval, report=report, now=workflow.now())
        for g in grants:  # audited before it counts: an approval that cannot be audited is void
            await self._audit(
                AuditAction.APPROVAL,
                g.approver,
                guardrail=g.guardrail,
                reason=g.reason,
                expires_at=g.expires_at,
            )
        self._status.approvals.extend(grants)
        self._status.still_needed = still_needed(report, self._status.approvals, workflow.now())
        return ApprovalResult(
            accepted=[g.guardrail for g in grants], still_needed=self._status.still_needed
        )

    async def _audit_from_signal(self, action: AuditAction, actor: str, **fields: object) -> None:
        """Audit from a signal handler: a failure is recorded in status, never fails the change.

        (An exception escaping a signal handler would fail the whole run, uncompensated.)
        """
        try:
            await self._audit(action, actor, **fields)
        except ActivityError as exc:
            message, _ = failure_of(exc)
            self._status.audit_failures.append(f"{action.value} by {actor}: {message}")
            workflow.logger.error(f"audit write failed: {message}")

    async def _audit(self, action: AuditAction, actor: str, **fields: object) -> None:
        """Write one audit record (idempotent by its id) before going on."""
        self._audit_seq += 1
        info = workflow.info()
        report = self._status.report
        fields.setdefault("report_hash", report.report_hash if report else "")
        record = AuditRecord(
            record_id=f"{self._request.change_id}:{info.run_id}:{self._audit_seq}",
            action=action,
            actor=actor,
            at=workflow.now(),
            change_id=self._request.change_id,
            run_id=info.run_id,
            policy_hash=report.policy_hash if report else "",
            **fields,
        )
        await workflow.execute_activity(
            "record_audit",
            record,
            result_type=bool,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=AUDIT_RETRY,
        )

    # ---------------------------------------------------------------- main line

    @workflow.run
    async def run(self, request: ChangeRequest) -> ChangeResult:
        """Gate, execute in waves, bake, and finish with one outcome."""
        deadline = request.deadline or workflow.now() + DEFAULT_DEADLINE
        ctx = ChangeContext.of(request).model_copy(update={"deadline": deadline})
        workflow.upsert_search_attributes(
            [
                sa.CHANGE_ID.value_set(request.change_id),
                sa.CHANGE_KIND.value_set(request.kind),
                sa.CHANGE_ENVIRONMENT.value_set(request.environment),
                sa.CHANGE_TEAM.value_set(request.team),
                sa.CHANGE_TARGETS.value_set(sa.fit_keyword_list([t.id for t in request.targets])),
            ]
        )
        problems = await self._validate(request)
        if problems:
            return await self._finish(Outcome.REJECTED, "invalid change: " + "; ".join(problems))

        try:
            report = await self._gate_until_proceed(ctx, deadline, categories=None)
            if report is None:
                return await self._finish(Outcome.REJECTED, self._status.message)
            await self._execute(request, ctx, deadline)
        except BaseException as exc:
            if not _compensable(exc):
                raise
            return await self._unwind(exc)
        applied = len(self._status.applied)
        return await self._finish(Outcome.COMPLETED, f"applied to {applied} target(s)")

    async def _validate(self, request: ChangeRequest) -> list[str]:
        result = await workflow.execute_activity_method(
            ChangeActivities.validate_change,
            ValidateChangeInput(kind=request.kind, params=request.params),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return result.problems

    # ---------------------------------------------------------------- gate

    async def _gate_until_proceed(
        self, ctx: ChangeContext, deadline: datetime, *, categories: list[Category] | None
    ) -> GuardrailReport | None:
        """Gate until it says proceed; ``None`` when the deadline passes first."""
        while True:
            self._set_phase(Phase.GATING, "running the guardrail gate")
            report = await self._run_gate(ctx, categories)
            if report.decision is Decision.PROCEED:
                return report
            if categories is None:
                # Before the first mutation, a change that cannot go on must not hold its targets;
                # mid-rollout it keeps them, since they are half-changed.
                await self._release_locks()
            now = workflow.now()
            if report.decision is Decision.WAIT and report.retry_after is not None:
                if report.retry_after >= deadline:
                    self._status.message = (
                        f"the gate asks to wait until {report.retry_after.isoformat()}, "
                        f"after the deadline {deadline.isoformat()}"
                    )
                    await self._deadline_passed()
                    return None
                self._set_phase(
                    Phase.WAITING, f"waiting until {report.retry_after.isoformat()} to gate again"
                )
                until = report.retry_after
            else:
                names = ", ".join(c.guardrail for c in report.failures)
                if approvable(report):
                    self._directory = await workflow.execute_activity(
                        "load_directory",
                        LoadDirectoryInput(change_id=self._request.change_id),
                        result_type=Directory,
                        start_to_close_timeout=timedelta(seconds=30),
                        retry_policy=AUDIT_RETRY,
                    )
                    if self._covered(report):
                        return report  # every failure is covered by valid approvals (I1)
                    self._status.still_needed = still_needed(report, self._status.approvals, now)
                    self._set_phase(
                        Phase.AWAITING_APPROVAL,
                        f"blocked by {names}; awaiting approval of report {report.report_hash}",
                        awaiting=approver_groups(report),
                    )
                else:
                    self._set_phase(Phase.BLOCKED, f"blocked by {names}; fix the cause and recheck")
                until = deadline
            if until <= now:
                self._status.message = f"the deadline {deadline.isoformat()} passed"
                await self._deadline_passed()
                return None
            covered = functools.partial(self._covered, report)
            woke = await self._wait(
                lambda: self._recheck or covered(),  # noqa: B023 (awaited in this iteration)
                until - now,
            )
            if not woke and until >= deadline:
                self._status.message = (
                    f"the gate did not pass before the deadline {deadline.isoformat()}"
                )
                await self._deadline_passed()
                return None
            if not self._recheck and covered():
                return report
            self._recheck = False

    async def _run_gate(
        self, ctx: ChangeContext, categories: list[Category] | None
    ) -> GuardrailReport:
        self._status.gate_runs += 1
        report = await workflow.execute_child_workflow(
            GuardrailGateWorkflow.run,
            GateInput(change=ctx, policy=self._request.policy, categories=categories),
            id=f"{self._request.change_id}/gate-{self._status.gate_runs}",
        )
        # A re-check before a wave covers only some categories: it replaces the full report
        # only when it is what now stops the change.
        if categories is None or report.decision is not Decision.PROCEED:
            self._status.report = report
        if any(c.category is Category.CONCURRENCY and c.passing for c in report.checks):
            self._holds_locks = True
        self._status.last_gate = report
        workflow.set_current_details(self._details())
        return report

    # ---------------------------------------------------------------- execute

    async def _execute(
        self, request: ChangeRequest, ctx: ChangeContext, deadline: datetime
    ) -> None:
        by_id = {t.id: t for t in request.targets}
        plan = plan_waves([t.id for t in request.targets], request.rollout.waves)
        self._status.waves = [WaveProgress(index=i, targets=ids) for i, ids in enumerate(plan)]
        for wave in self._status.waves:
            if wave.index > 0:
                report = await self._gate_until_proceed(ctx, deadline, categories=REGATE_CATEGORIES)
                if report is None:
                    raise _Unwind(Outcome.ROLLED_BACK, self._status.message)
            wave.state = "applying"
            self._set_phase(
                Phase.EXECUTING, f"wave {wave.index + 1}/{len(plan)}: {len(wave.targets)} target(s)"
            )
            await self._apply_wave(request, [by_id[i] for i in wave.targets], wave)
            await self._bake(request, wave)
            wave.state = "done"

    async def _apply_wave(
        self, request: ChangeRequest, targets: list[Target], wave: WaveProgress
    ) -> None:
        """Apply one wave: in this workflow when small, else in ``TargetBatch`` children."""

        def applied(target_id: str) -> None:
            wave.applied.append(target_id)
            self._status.applied.append(target_id)

        if len(targets) <= BATCH_SIZE:
            await apply_targets(
                self._saga,
                change_id=request.change_id,
                kind=request.kind,
                params=request.params,
                targets=targets,
                max_parallel=request.rollout.max_parallel,
                on_applied=applied,
                on_reverted=self._status.reverted.append,
                should_stop=lambda: self._stop is not None,
            )
        else:
            for start in range(0, len(targets), BATCH_SIZE):
                if self._stop is not None:
                    break
                batch = targets[start : start + BATCH_SIZE]
                result = await self._saga.run(
                    f"batch {batch[0].id}..{batch[-1].id}",
                    functools.partial(self._batch, request, batch, "apply"),
                    functools.partial(self._batch, request, batch, "revert"),
                )
                for target_id in result.done:
                    applied(target_id)
        if self._stop is not None:
            raise self._stop

    async def _batch(self, request: ChangeRequest, batch: list[Target], mode: str) -> BatchResult:
        """Run one ``TargetBatch`` child; a revert batch's partial results are kept on failure."""
        child_id = f"{request.change_id}/{mode}-{batch[0].id}"
        try:
            result = await workflow.execute_child_workflow(
                TargetBatchWorkflow.run,
                BatchInput(
                    change_id=request.change_id,
                    kind=request.kind,
                    params=request.params,
                    targets=batch,
                    max_parallel=request.rollout.max_parallel,
                    mode=mode,
                ),
                id=child_id,
            )
        except ChildWorkflowError as exc:
            cause = exc.cause
            if mode == "revert" and isinstance(cause, ApplicationError) and cause.details:
                partial = BatchResult.model_validate(cause.details[0])
                self._status.reverted.extend(partial.done)
            raise
        if mode == "revert":
            self._status.reverted.extend(result.done)
        return result

    async def _unwind(self, exc: BaseException) -> ChangeResult:
        """Compensate every applied step; re-raise a cancellation once done."""
        # A cancel may surface as the activity's or the gate child's failure, whose cause is the
        # cancellation: every form counts, or a cancelled change would end "rejected".
        cancelled = is_cancelled_exception(exc)
        if isinstance(exc, _Unwind):
            outcome, why = exc.outcome, exc.message
        elif cancelled:
            outcome, why = Outcome.ABORTED, "the workflow was cancelled"
        else:
            message, kind = failure_of(exc)
            outcome, why = Outcome.ROLLED_BACK, f"{kind}: {message}"
            if not self._saga.steps:
                # Nothing was mutated: the change never started (a policy the gate cannot use,
                # an unreadable operator directory …), so it is rejected, not rolled back.
                outcome, why = Outcome.REJECTED, f"the change could not start: {why}"
        self._set_phase(Phase.ROLLING_BACK, f"rolling back: {why}")
        _, failures = await self._saga.unwind()
        self._status.compensation_failures = failures
        if failures:
            outcome = Outcome.FAILED
            why += f"; {len(failures)} compensation(s) failed: " + ", ".join(
                f.step for f in failures
            )
        result = await self._finish(outcome, why)
        if cancelled:
            raise asyncio.CancelledError(why)  # the run ends as cancelled, after compensating
        return result

    # ---------------------------------------------------------------- bookkeeping

    def _set_phase(self, phase: Phase, message: str, *, awaiting: list[str] | None = None) -> None:
        changed = phase is not self._status.phase or (awaiting or []) != self._status.awaiting_from
        self._status.phase = phase
        self._status.message = message
        self._status.awaiting_from = awaiting or []
        self._status.updated_at = workflow.now()
        workflow.set_current_details(self._details())
        if not changed:
            return  # a new message alone needs no search-attribute upsert (a history event)
        workflow.upsert_search_attributes(
            [
                sa.CHANGE_PHASE.value_set(phase.value),
                sa.AWAITING_APPROVAL_FROM.value_set(self._status.awaiting_from)
                if self._status.awaiting_from
                else sa.AWAITING_APPROVAL_FROM.value_unset(),
            ]
        )

    def _details(self) -> str:
        head = f"## {self._request.change_id}: {self._status.phase.value}\n\n{self._status.message}"
        report = self._status.report
        return head if report is None else head + "\n\n" + report_markdown(report)

    async def _deadline_passed(self) -> None:
        """Audit (and, if the policy says so, page) a gate that did not pass before the deadline."""
        await self._audit(AuditAction.DEADLINE, "changeguard", reason=self._status.message)
        if (await self._rollout_policy()).page_on_reject:
            await self._page(
                f"{self._request.change_id} did not pass its gate in time: {self._status.message}"
            )

    def _covered(self, report: GuardrailReport) -> bool:
        """True when the report blocks only on failures that valid approvals cover."""
        return (
            report.decision is Decision.BLOCK
            and approvable(report)
            and not still_needed(report, self._status.approvals, workflow.now())
        )

    async def _release_locks(self) -> None:
        """Give back every target lock this change holds; shielded, and never fails the change."""
        if not self._holds_locks:
            return
        self._holds_locks = False
        release = workflow.execute_activity_method(
            LockActivities.release_target_locks,
            ReleaseLocksInput(
                change_id=self._request.change_id, target_ids=[t.id for t in self._request.targets]
            ),
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=5),
        )
        try:
            await asyncio.shield(release)
        except (ActivityError, asyncio.CancelledError) as exc:
            # The locks' own watch expires them once this workflow has closed.
            workflow.logger.warning("releasing target locks failed", extra={"error": str(exc)})

    async def _finish(self, outcome: Outcome, message: str) -> ChangeResult:
        await self._release_locks()
        self._set_phase(_OUTCOME_PHASE[outcome], message)
        self._status.outcome = outcome
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ChangeResult(
            change_id=self._request.change_id,
            outcome=outcome,
            message=message,
            report=self._status.report,
            applied=self._status.applied,
            reverted=self._status.reverted,
            compensation_failures=self._status.compensation_failures,
        )
