"""The ``GuardedChange`` workflow: gate, then apply in waves as a saga, then one terminal outcome.

Life of a change (docs/design.md): validate → gate (child workflow) → wait for the window, or stay blocked
until an operator rechecks, until the deadline → apply wave by wave with bounded parallelism, each
mutation's compensation registered before it runs → bake → ``completed``. A failed mutation or a
cancellation unwinds every applied step in reverse (``rolled_back``, or ``failed`` when a
compensation itself failed).

Only failures Temporal reports (activity, child, cancellation, our ``ApplicationError``) unwind the
saga. A bug in this code fails the workflow *task* instead, which Temporal retries until a fixed
worker is deployed: nothing is compensated on the strength of a bug.

Trust at the edge (docs/design.md, I8-I10): any Temporal client can start, signal, update and query
a change, so every entry point takes ``*args`` and decodes its payload itself
(:mod:`workflows.inputs`). No payload can fail a workflow task: a bad start ends ``rejected`` with
the reason, a bad update is refused by its validator, a bad signal is recorded (status and ledger)
and changes nothing else. The change id is the workflow id, claimed once in the ledger
(``claim_change``): a second run under a used id, from any client, ends ``rejected`` before any
check or mutation. A Temporal reset keeps the run chain's first run id, so a reset run continues
its change under the same claim.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from workflows import calls, errors, ids, observe
    from workflows import search_attributes as sa
    from workflows.approvals import approvable, approval_problem, grant, still_needed
    from workflows.bake import BakeMixin
    from workflows.batch import TargetBatchWorkflow
    from workflows.change_events import ChangeEventEmitter
    from workflows.details import change_details
    from workflows.gate import GuardrailGateWorkflow
    from workflows.identity import (
        IdentityGuard,
        unsigned_reason,
    )
    from workflows.identity_models import VerifyResult
    from workflows.inputs import Refusal, decode
    from workflows.models import (
        REQUEST_MAX_BYTES,
        TERMINAL_PHASES,
        ApplyResult,
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
        ClaimChangeInput,
        ClaimChangeResult,
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
        valid_id,
    )
    from workflows.mutations import apply_targets, irreversible_in, options_from
    from workflows.progress_models import MutationOptions
    from workflows.report import approver_groups, ledger_checks, scheduled_for
    from workflows.rollout_models import (
        RolloutPolicy,
    )
    from workflows.saga import Saga, failure_of
    from workflows.summaries import day_clock, line, window_wait_summary
    from workflows.timing_models import not_before_problem
    from workflows.types import excerpt
    from workflows.wave_timing import WAVE_TIMING_PATCH, WaveTimingMixin
    from workflows.wave_window import WAVE_WINDOW_PATCH, run_in_lanes

DEFAULT_DEADLINE = timedelta(hours=24)
PLAN_PATCH = "plan-in-ledger"
"""The ``workflow.patched`` id of the wave plan's ledger record (docs/versioning.md)."""
BATCH_IRREVERSIBLE_PATCH = "batch-irreversible"
"""``workflow.patched`` id: irreversible steps a ``TargetBatch`` ran reach the point of no return."""
DUE_WAIT_PATCH = "due-wait-regates"
"""``workflow.patched`` id: a gate's ``wait`` whose time already came gates again (it was taken
for the deadline having passed, and the change ended rejected)."""
DUE_WAIT_REGATE = timedelta(seconds=1)
"""How soon a change gates again after a ``wait`` that came due while its gate ran."""
BATCH_SIZE = 100
"""Waves larger than this run in ``TargetBatch`` children, keeping every history small."""
REGATE_CATEGORIES = [Category.TIMING, Category.CONCURRENCY, Category.IN_FLIGHT]
"""Re-checked before every wave after the first: the world may have caught fire mid-rollout."""
HUMAN_DECISION_TIMEOUT = timedelta(hours=24)
"""How long a change stopped past its point of no return waits for resume or abort."""
MAX_RECORDED = 20
"""Refused approvals, pages and audit failures kept in the status (older ones are dropped)."""

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


def _approval(args: tuple[Any, ...]) -> Approval | Refusal:
    return decode(
        Approval, args, what="the approval", record_fields=("approver", "guardrails", "reason")
    )


def _operator_action(args: tuple[Any, ...]) -> OperatorAction:
    """The operator action of an update, or the refusal its validator raises."""
    action = decode(OperatorAction, args, what="the operator action")
    if isinstance(action, Refusal):
        raise ApplicationError(
            action.why + ' (send {"operator": "<you>", "reason": "<why>"})',
            type=errors.REFUSED,
            non_retryable=True,
        )
    return action


def _placeholder(change_id: str, decoded: object) -> ChangeRequest:
    """A stand-in request for a start that is refused: what the record can say about it."""
    fields = decoded.fields if isinstance(decoded, Refusal) else {}
    known = decoded.model_dump() if isinstance(decoded, ChangeRequest) else {}

    def pick(name: str) -> str:
        value = known.get(name) or fields.get(name) or ""
        return excerpt(value, 128) if isinstance(value, str) else ""

    return ChangeRequest.model_construct(
        change_id=change_id,
        kind=pick("kind"),
        summary="",
        requester=pick("requester"),
        team=pick("team"),
        environment=pick("environment"),
        targets=[],
        params={},
        policy=None,
        deadline=None,
    )


def _queued_only(report: GuardrailReport) -> bool:
    """True when the report only waits on concurrency (a lock queue), nothing else stops it."""
    stopping = [c for c in report.checks if c.mode.value == "enforce" and not c.passing]
    return bool(stopping) and all(
        c.category is Category.CONCURRENCY and c.status.value == "wait" for c in stopping
    )


def _keep_last(items: list[Any], limit: int = MAX_RECORDED) -> None:
    """Drop the oldest entries beyond ``limit`` (the status must stay small: I10)."""
    del items[: max(0, len(items) - limit)]


@workflow.defn(name="GuardedChange", failure_exception_types=[ValidationError])
class GuardedChangeWorkflow(BakeMixin, WaveTimingMixin):
    """Run one change behind the guardrail gate, as a compensating saga in waves."""

    @workflow.init
    def __init__(self, *args: Any) -> None:
        # Decoded here, not by the SDK: a payload the SDK cannot decode would fail the task.
        self._change_id = workflow.info().workflow_id
        decoded = decode(
            ChangeRequest,
            args,
            what="the change request",
            record_fields=("requester", "team", "kind"),
        )
        self._refusal: Refusal | None = decoded if isinstance(decoded, Refusal) else None
        if isinstance(decoded, ChangeRequest):
            self._refusal = self._start_problem(decoded, args)
        request = decoded if isinstance(decoded, ChangeRequest) else None
        if request is not None and self._refusal is None:
            request = request.model_copy(update={"change_id": self._change_id})
        self._request: ChangeRequest = request or _placeholder(self._change_id, decoded)
        self._status = ChangeStatus(change_id=self._change_id, kind=self._request.kind)
        self._recheck = False
        self._saga = Saga()
        self._holds_locks = False
        self._directory: Directory | None = None
        self._stop: _Unwind | None = None  # set by the abort / rollback updates
        self._resumed = False  # set by the resume update while paused
        self._rollout: RolloutPolicy | None = None
        self._audit_seq = 0
        self._needs_repair: list[str] = []
        self._mutation_options: MutationOptions | None = None
        self._irreversible: dict[str, list[str]] = {}  # target → irreversible steps in effect
        self._pages_sent = 0
        self._phase_since: datetime | None = None  # when the current phase began (metrics)
        self._events = ChangeEventEmitter(self._change_id)  # docs/change-events.md
        self._identity = IdentityGuard()  # signatures: required where, accepted which

    # ---------------------------------------------------------------- handlers

    @workflow.query(name="status")
    def status(self, *args: Any) -> ChangeStatus:
        """Where the change is, what it is waiting for, and what it has done (input ignored)."""
        return self._status

    @workflow.signal(name="recheck")
    async def recheck(self, *args: Any) -> None:
        """Run the gate again now (after an operator fixed a cause); the payload is optional.

        A malformed payload is recorded (status and ledger) and triggers nothing.
        """
        inp = decode(
            RecheckInput,
            args,
            what="the recheck payload",
            optional=True,
            record_fields=("requested_by",),
        )
        if isinstance(inp, Refusal):
            await self._record_refused_signal("recheck", inp, actor_field="requested_by")
            return
        verified = None
        if inp.signature is not None or self._identity.required.operator_actions:
            verified, why = await self._verify_action("recheck", inp.requested_by, inp)
            if why:
                refusal = Refusal(why, fields={"requested_by": inp.requested_by})
                await self._record_refused_signal("recheck", refusal, actor_field="requested_by")
                return
        workflow.logger.info(f"recheck requested by {inp.requested_by or 'someone'}")
        observe.operator_action("recheck")
        self._recheck = True
        await self._audit_from_signal(
            AuditAction.RECHECK,
            inp.requested_by or "unknown",
            reason=inp.reason,
            **self._identity_detail(verified),
        )

    @workflow.update  # named "abort" after the method (unnamed: the SDK types its result)
    async def abort(self, *args: Any) -> OperatorActionResult:
        """Stop the change and undo everything applied (outcome ``aborted``); audited."""
        action = _operator_action(args)
        verified = await self._verified_action("abort", action)
        return await self._stop_with(AuditAction.ABORT, Outcome.ABORTED, action, verified)

    @abort.validator
    def validate_abort(self, *args: Any) -> None:
        """Refuse a malformed payload, or when the change is already ending."""
        self._refuse_unsigned("abort", _operator_action(args))
        self._refuse_if_ending("there is nothing to abort")

    @workflow.update
    async def rollback(self, *args: Any) -> OperatorActionResult:
        """Undo everything applied (outcome ``rolled_back``); only once mutations have begun."""
        action = _operator_action(args)
        verified = await self._verified_action("rollback", action)
        return await self._stop_with(AuditAction.ROLLBACK, Outcome.ROLLED_BACK, action, verified)

    @rollback.validator
    def validate_rollback(self, *args: Any) -> None:
        """Refuse a malformed payload, before any mutation (use abort), or when ending."""
        self._refuse_unsigned("rollback", _operator_action(args))
        self._refuse_if_ending("there is nothing to roll back")
        if not self._status.applied:
            raise ApplicationError(
                "nothing has been applied yet; use abort to stop this change",
                type=errors.REFUSED,
                non_retryable=True,
            )

    @workflow.update
    async def resume(self, *args: Any) -> OperatorActionResult:
        """Go on baking after a pause-and-page (the operator judged the signal harmless)."""
        action = _operator_action(args)
        verified = await self._verified_action("resume", action)
        await self._audit(
            AuditAction.RESUME,
            action.operator,
            reason=action.reason,
            **self._identity_detail(verified),
        )
        observe.operator_action("resume")
        self._resumed = True
        return OperatorActionResult(phase=self._status.phase, message="resuming the bake")

    @resume.validator
    def validate_resume(self, *args: Any) -> None:
        """Only a paused change can be resumed (and only with a well-formed payload)."""
        self._refuse_unsigned("resume", _operator_action(args))
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
        self,
        audit: AuditAction,
        outcome: Outcome,
        action: OperatorAction,
        verified: VerifyResult | None = None,
    ) -> OperatorActionResult:
        await self._audit(
            audit, action.operator, reason=action.reason, **self._identity_detail(verified)
        )
        observe.operator_action(audit.value)
        self._stop = _Unwind(outcome, f"{audit.value} by {action.operator}: {action.reason}")
        return OperatorActionResult(
            phase=self._status.phase, message=f"{audit.value} requested; unwinding"
        )

    async def _wait(
        self, condition: Callable[[], bool], limit: timedelta | None, *, summary: str | None = None
    ) -> bool:
        """Wait for ``condition`` or ``limit`` (False), or raise when an operator stopped us.

        ``summary`` names the timer in the Web UI's timeline.
        """
        try:
            await workflow.wait_condition(
                lambda: self._stop is not None or condition(),
                timeout=limit,
                timeout_summary=summary if limit is not None else None,
            )
        except TimeoutError:
            return False
        finally:
            if self._stop is not None:
                raise self._stop
        return True

    @workflow.update
    async def approve(self, *args: Any) -> ApprovalResult:
        """Approve opt-outable failures of the current report (validated first; audited)."""
        approval = _approval(args)
        if isinstance(approval, Refusal):  # the validator refused it already; belt and braces
            raise ApplicationError(approval.why, type=errors.REFUSED, non_retryable=True)
        verified = await self._verify_approval(approval)
        if verified is not None:  # signed: verified now, and the change may have moved on
            problem = verified.why if not verified.ok else self._approval_problem(approval)
            if problem:
                await self._audit_rejected_approval(approval, problem)
                raise ApplicationError(problem, type=errors.REFUSED, non_retryable=True)
        return await self._accept(approval, verified)

    @approve.validator
    def validate_approve(self, *args: Any) -> None:
        """Refuse, with the reason the caller sees at once, what cannot be approved."""
        approval = _approval(args)
        problem = (
            approval.why
            if isinstance(approval, Refusal)
            else self._approval_identity_problem(approval) or self._approval_problem(approval)
        )
        if problem:
            reason = (
                "malformed" if isinstance(approval, Refusal) else observe.refusal_reason(problem)
            )
            observe.approval_refused(reason, in_validator=True)
            raise ApplicationError(problem, type=errors.REFUSED, non_retryable=True)

    @workflow.signal(name="approve_signal")
    async def approve_signal(self, *args: Any) -> None:
        """The ``approve`` payload for clients that can only signal; refusals are recorded."""
        approval = _approval(args)
        if isinstance(approval, Refusal):
            observe.approval_refused("malformed")
            self._reject_approval(
                approval.why,
                approver=str(approval.fields.get("approver", "")),
                guardrails=list(approval.fields.get("guardrails", [])),
                payload=approval.payload,
            )
            await self._audit_from_signal(
                AuditAction.APPROVAL_REJECTED,
                str(approval.fields.get("approver", "")) or "unknown",
                reason=excerpt(approval.why, 2000),
                detail={"payload": approval.payload},
            )
            return
        problem = self._approval_identity_problem(approval) or self._approval_problem(approval)
        verified = None if problem else await self._verify_approval(approval)
        if verified is not None:  # signed: verified now, and the change may have moved on
            problem = verified.why if not verified.ok else self._approval_problem(approval)
        if problem is None:
            try:
                await self._accept(approval, verified)
                return
            except ActivityError as exc:  # could not be audited: the approval is void
                problem = f"the approval could not be audited ({failure_of(exc)[0]}); send it again"
        observe.approval_refused(observe.refusal_reason(problem))
        self._reject_approval(problem, approver=approval.approver, guardrails=approval.guardrails)
        await self._audit_rejected_approval(approval, problem)

    async def _audit_rejected_approval(self, approval: Approval, problem: str) -> None:
        await self._audit_from_signal(
            AuditAction.APPROVAL_REJECTED,
            approval.approver,
            guardrail=excerpt(",".join(approval.guardrails), 1000),
            reason=excerpt(f"{problem} (their reason: {approval.reason})", 4000),
            report_hash=approval.report_hash,
        )

    # ---------------------------------------------------------------- verified identity

    def _approval_identity_problem(self, approval: Approval) -> str | None:
        return self._identity.approval_problem(approval, self._status.report)

    async def _verify_approval(self, approval: Approval) -> VerifyResult | None:
        return await self._identity.verify_approval(
            self._change_id, approval, self._status.report, self._request.requester
        )

    def _refuse_unsigned(self, name: str, action: OperatorAction) -> None:
        """Validators: refuse an unsigned operator action where one is required, or a replay."""
        problem = self._identity.action_problem(name, action.signature)
        if problem:
            raise ApplicationError(problem, type=errors.REFUSED, non_retryable=True)

    async def _verified_action(self, name: str, action: OperatorAction) -> VerifyResult | None:
        """Update handlers: verify a signed operator action; a refusal is audited and raised."""
        if action.signature is None:
            return None
        verified, why = await self._verify_action(name, action.operator, action)
        if why:
            await self._audit_from_signal(
                AuditAction.REFUSED_ACTION,
                action.operator,
                reason=excerpt(f"{name}: {why}", 2000),
                detail={"action": name},
            )
            raise ApplicationError(why, type=errors.REFUSED, non_retryable=True)
        return verified

    async def _verify_action(
        self, name: str, actor: str, payload: OperatorAction | RecheckInput
    ) -> tuple[VerifyResult | None, str]:
        return await self._identity.verify_action(
            self._change_id, name, actor, payload.reason, payload.signature
        )

    @staticmethod
    def _identity_detail(verified: VerifyResult | None) -> dict[str, Any]:
        return IdentityGuard.audit_fields(verified)

    def _reject_approval(
        self, why: str, *, approver: str, guardrails: list[str], payload: str = ""
    ) -> None:
        """Keep a refused approval signal in the status, bounded (I10)."""
        self._status.rejected_approvals.append(
            RejectedApproval(
                approver=excerpt(approver, 128),
                guardrails=[excerpt(g, 128) for g in guardrails[:20]],
                why=excerpt(why, 1000),
                at=workflow.now(),
                payload=payload,
            )
        )
        _keep_last(self._status.rejected_approvals)

    async def _record_refused_signal(
        self, signal: str, refusal: Refusal, *, actor_field: str
    ) -> None:
        """A malformed signal changes nothing: it is recorded in the status and the ledger."""
        actor = str(refusal.fields.get(actor_field, "")) or "unknown"
        self._status.refused_signals.append(f"{signal} from {actor}: {excerpt(refusal.why, 500)}")
        _keep_last(self._status.refused_signals)
        await self._audit_from_signal(
            AuditAction.REFUSED_ACTION,
            actor,
            reason=excerpt(f"{signal}: {refusal.why}", 2000),
            detail={"signal": signal, "payload": refusal.payload},
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

    async def _accept(
        self, approval: Approval, verified: VerifyResult | None = None
    ) -> ApprovalResult:
        report = self._status.report
        assert report is not None
        grants = grant(
            IdentityGuard.capped(approval, workflow.now()), report=report, now=workflow.now()
        )
        if verified is not None:
            self._identity.accept(verified)
            for g in grants:
                g.verified_by = verified.identity
        try:
            for g in grants:  # audited before it counts: an approval that cannot be audited is void
                await self._audit(
                    AuditAction.APPROVAL,
                    g.approver,
                    guardrail=g.guardrail,
                    reason=g.reason,
                    expires_at=g.expires_at,
                    **self._identity_detail(verified),
                )
        except ActivityError:
            if verified is not None:  # void: the same signed approval may be sent again
                self._identity.accepted.pop(verified.digest, None)
            raise
        self._status.approvals.extend(grants)
        for g in grants:
            observe.approval_accepted(g.guardrail)
        self._status.still_needed = still_needed(report, self._status.approvals, workflow.now())
        workflow.set_current_details(self._details())  # the approve JSON names what is left
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
            self._status.audit_failures.append(
                excerpt(f"{action.value} by {actor}: {message}", 500)
            )
            _keep_last(self._status.audit_failures)
            workflow.logger.error(f"audit write failed: {message}")

    async def _audit(self, action: AuditAction, actor: str, **fields: object) -> None:
        """Write one audit record (idempotent by its id) before going on."""
        self._audit_seq += 1
        info = workflow.info()
        report = self._status.report
        fields.setdefault("report_hash", report.report_hash if report else "")
        fields.setdefault(
            "policy_hash", (report.bundle_hash or report.policy_hash) if report else ""
        )
        record = AuditRecord(
            record_id=f"{self._change_id}:{info.run_id}:{self._audit_seq}",
            action=action,
            actor=actor,
            at=workflow.now(),
            change_id=self._change_id,
            run_id=info.run_id,
            **fields,
        )
        await calls.record_audit(record, summary=line(f"record {action.value} in the ledger"))

    # ---------------------------------------------------------------- main line

    @workflow.run
    async def run(self, *args: Any) -> ChangeResult:
        """Refuse a bad or reused start; else gate, execute in waves, bake, finish with one outcome."""
        with observe.span(
            "change", observe.change_attributes(self._request), expected=(_Unwind,)
        ) as current:
            result = await self._run()
            observe.change_finished(current, result)
        return result

    async def _run(self) -> ChangeResult:
        if self._refusal is not None:
            workflow.upsert_search_attributes([sa.CHANGE_ID.value_set(self._change_id)])
            return await self._refuse(self._refusal.why, payload=self._refusal.payload)
        request = self._request
        start = max(workflow.now(), request.not_before or workflow.now())  # a scheduled change
        deadline = request.deadline or start + DEFAULT_DEADLINE
        ctx = ChangeContext.of(request, self._change_id).model_copy(update={"deadline": deadline})
        workflow.upsert_search_attributes(
            [
                sa.CHANGE_ID.value_set(self._change_id),
                sa.CHANGE_KIND.value_set(request.kind),
                sa.CHANGE_ENVIRONMENT.value_set(request.environment),
                sa.CHANGE_TEAM.value_set(request.team),
                sa.CHANGE_TARGETS.value_set(sa.fit_keyword_list([t.id for t in request.targets])),
            ]
        )
        problems = await self._validate(request)
        if problems:
            return await self._refuse("invalid change: " + "; ".join(problems))
        if request.signature is not None:  # verified before the id is claimed
            why = await self._identity.verify_request(self._change_id, request)
            if why:
                return await self._refuse(why)
        try:
            claim = await self._claim(request)
        except ActivityError as exc:
            message, _ = failure_of(exc)
            return await self._refuse(
                f"the change ledger could not record the start ({message}); nothing was done: "
                "start the change again once the audit store is reachable"
            )
        if not claim.claimed:
            at = claim.at.isoformat(timespec="seconds") if claim.at else "an earlier date"
            return await self._refuse(
                f"change id {self._change_id} was used by run {claim.run_id} on {at}; "
                "choose a new id (a change id is used once)"
            )
        self._identity.required = claim.identity
        if request.signature is None and claim.identity.requests:
            return await self._refuse(f"the change request is {unsigned_reason('start')}")
        await self._events.started(request, deadline)

        try:
            await self._until_not_before(request)
            report = await self._gate_until_proceed(ctx, deadline, categories=None)
            if report is None:
                return await self._finish(Outcome.REJECTED, self._status.message)
            await self._execute(request, ctx, deadline)
        except BaseException as exc:
            if not _compensable(exc):
                raise
            if self._irreversible:  # past the point of no return: a human decides
                return await self._hold_for_a_human(exc, request, ctx, deadline)
            return await self._unwind(exc)
        applied = len(self._status.applied)
        return await self._finish(Outcome.COMPLETED, f"applied to {applied} target(s)")

    def _start_problem(self, request: ChangeRequest, args: tuple[Any, ...]) -> Refusal | None:
        """What the model cannot check: the id against the workflow id, size, a past deadline."""
        problems = []
        if not valid_id(self._change_id):
            problems.append(
                f"the workflow id {excerpt(self._change_id, 80)!r} is not a valid change id: use "
                "1-128 letters, digits, '.', '_', ':' or '-' (it is the change id)"
            )
        if request.change_id is not None and request.change_id != self._change_id:
            problems.append(
                f"change_id {request.change_id!r} differs from the workflow id "
                f"{excerpt(self._change_id, 80)!r}: the change id is the workflow id (omit "
                "change_id, or start the workflow with that id)"
            )
        size = len(json.dumps(args[0], default=str)) if args else 0
        if size > REQUEST_MAX_BYTES:
            problems.append(
                f"the request is {size:,} bytes of JSON; at most {REQUEST_MAX_BYTES:,} are accepted"
            )
        if request.deadline is not None and request.deadline <= workflow.now():
            problems.append(
                f"deadline {request.deadline.isoformat()} is in the past; give a future time"
            )
        scheduled = not_before_problem(request.not_before, request.deadline, workflow.now())
        if scheduled:
            problems.append(scheduled)
        if not problems:
            return None
        return Refusal("the change request is invalid: " + "; ".join(problems), problems=problems)

    async def _refuse(self, why: str, *, payload: str = "") -> ChangeResult:
        """End ``rejected`` before any check or mutation; the refusal is in the ledger."""
        why = excerpt(why, 4000)
        detail: dict[str, Any] = {"payload": payload} if payload else {}
        await self._audit_from_signal(
            AuditAction.REFUSED,
            excerpt(self._request.requester or "unknown", 128),
            reason=why,
            detail=detail,
        )
        return await self._finish(Outcome.REJECTED, why)

    async def _validate(self, request: ChangeRequest) -> list[str]:
        result = await calls.validate_change(
            ValidateChangeInput(kind=request.kind, params=request.params),
            summary=line(f"validate {request.kind} params"),
        )
        self._mutation_options = options_from(result)  # the kind's timeouts and heartbeats
        if not result.problems:
            self._events.enable(result.change_events)
        return result.problems

    async def _claim(self, request: ChangeRequest) -> ClaimChangeResult:
        """Claim the change id for this run chain in the ledger (its ``started`` record)."""
        info = workflow.info()
        return await calls.claim_change(
            ClaimChangeInput(
                change_id=self._change_id,
                run_id=info.first_execution_run_id,
                at=workflow.now(),
                requester=request.requester,
                team=request.team,
                request_digest=request.digest(),
                requester_identity=self._identity.requester_identity,
            )
        )

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
            if categories is None and not _queued_only(report):
                # Before the first mutation, a change that cannot go on must not hold its targets;
                # mid-rollout it keeps them, since they are half-changed. A change that only waits
                # in a lock queue keeps the locks handed to it, or it would lose its turn.
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
                    Phase.WAITING,
                    f"waiting until {report.retry_after.isoformat()} to gate again "
                    f"({scheduled_for(report.retry_after, report.retry_zone)})",
                )
                self._status.retry_after, self._status.retry_zone = (
                    report.retry_after,
                    report.retry_zone,
                )
                until = report.retry_after
                timer = window_wait_summary(until, report)
            else:
                names = ", ".join(c.rule_id for c in report.failures)
                if approvable(report):
                    self._directory = await calls.load_directory(
                        LoadDirectoryInput(change_id=self._change_id)
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
                awaited = "approval or recheck" if approvable(report) else "a recheck"
                timer = line(f"wait for {awaited} until {day_clock(deadline)}")
            if until <= now and until < deadline and workflow.patched(DUE_WAIT_PATCH):
                # A wait that came due while the gate ran (a slow gate): gate again shortly.
                until = now + DUE_WAIT_REGATE
            if until <= now:
                self._status.message = f"the deadline {deadline.isoformat()} passed"
                await self._deadline_passed()
                return None
            covered = functools.partial(self._covered, report)
            woke = await self._wait(
                lambda: self._recheck or covered(),  # noqa: B023 (awaited in this iteration)
                until - now,
                summary=timer,
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
            id=ids.gate_id(self._change_id, self._status.gate_runs),
            static_summary=f"gate {self._status.gate_runs}"
            + (f": {', '.join(c.value for c in categories)}" if categories else ": every rule"),
        )
        # A re-check before a wave covers only some categories: it replaces the full report
        # only when it is what now stops the change.
        if categories is None or report.decision is not Decision.PROCEED:
            self._status.report = report
        if any(c.category is Category.CONCURRENCY and c.passing for c in report.checks):
            self._holds_locks = True
        self._status.last_gate = report
        observe.gate_decided(report, regate=categories is not None)
        workflow.set_current_details(self._details())
        await self._audit(
            AuditAction.GATE,
            "changeguard",
            reason=f"gate {self._status.gate_runs}: {report.decision.value}",
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

    # ---------------------------------------------------------------- execute

    async def _execute(
        self, request: ChangeRequest, ctx: ChangeContext, deadline: datetime
    ) -> None:
        by_id = {t.id: t for t in request.targets}
        plan = plan_waves([t.id for t in request.targets], request.rollout.waves)
        self._status.waves = [WaveProgress(index=i, targets=ids) for i, ids in enumerate(plan)]
        await self._record_plan(plan)
        for wave in self._status.waves:
            if workflow.patched(WAVE_TIMING_PATCH):  # the wave and its bake must fit first
                await self._fit_wave(ctx, deadline, wave, len(plan))
            if wave.index > 0:
                report = await self._gate_until_proceed(ctx, deadline, categories=REGATE_CATEGORIES)
                if report is None:
                    raise _Unwind(Outcome.ROLLED_BACK, self._status.message)
            wave.state = "applying"
            self._set_phase(
                Phase.EXECUTING, f"wave {wave.index + 1}/{len(plan)}: {len(wave.targets)} target(s)"
            )
            await self._events.wave("wave_started", wave.index, len(plan), wave.targets)
            with observe.span("wave", observe.wave_attributes(wave), expected=(_Unwind,)):
                await self._apply_wave(request, [by_id[i] for i in wave.targets], wave)
                await self._bake(request, wave)
            wave.state = "done"
            await self._events.wave("wave_finished", wave.index, len(plan), wave.applied)

    async def _record_plan(self, plan: list[list[str]]) -> None:
        """Write the wave plan to the ledger before the first mutation.

        The worked upgrade of docs/versioning.md: this step is new (an activity no earlier history
        has at this point), so it runs behind ``workflow.patched``; histories recorded before it
        take the old path and still replay. Once no change started before it runs any more, this
        becomes ``workflow.deprecate_patch(PLAN_PATCH)`` (tests/replay/upgrade.py shows that step).
        """
        if not workflow.patched(PLAN_PATCH):
            return
        sizes = [len(ids) for ids in plan]
        await self._audit(
            AuditAction.PLAN,
            "changeguard",
            reason=f"{len(plan)} wave(s) of {', '.join(map(str, sizes))} target(s)",
            detail={
                "waves": sizes,
                "first_targets": [ids[:5] for ids in plan][:20],
                "bake": self._request.rollout.bake.total_seconds(),
                "max_parallel": self._request.rollout.max_parallel,
            },
        )

    async def _apply_wave(
        self, request: ChangeRequest, targets: list[Target], wave: WaveProgress
    ) -> None:
        """Apply one wave: in this workflow when small, else in ``TargetBatch`` children."""
        seen = set(self._status.applied)  # a set: a list scan per target grew as N squared

        def applied(target_id: str) -> None:
            wave.applied.append(target_id)
            if target_id not in seen:  # a roll forward replays applied targets
                seen.add(target_id)
                self._status.applied.append(target_id)

        if len(targets) <= BATCH_SIZE:
            await apply_targets(
                self._saga,
                change_id=self._change_id,
                kind=request.kind,
                params=request.params,
                targets=targets,
                max_parallel=request.rollout.max_parallel,
                on_applied=applied,
                on_reverted=self._status.reverted.append,
                should_stop=lambda: self._stop is not None,
                options=self._mutation_options,
                on_result=self._note_result,
                on_error=self._note_error,
            )
        elif workflow.patched(WAVE_WINDOW_PATCH):  # batches in lanes sharing max_parallel

            async def lane_batch(batch: list[Target], width: int) -> None:
                try:
                    result = await self._saga.run(
                        f"batch {batch[0].id}..{batch[-1].id}",
                        functools.partial(self._batch, request, batch, "apply", width),
                        functools.partial(self._batch, request, batch, "revert"),
                    )
                except ChildWorkflowError as exc:
                    # Batches still in flight may yet reach the point of no return: keep what
                    # this one applied (in order, once) for the repair list, as small waves do.
                    cause = exc.cause
                    if isinstance(cause, ApplicationError) and cause.details:
                        seen.update(self._status.applied)
                        for target_id in BatchResult.model_validate(cause.details[0]).done:
                            applied(target_id)
                    raise
                for target_id in result.done:
                    applied(target_id)

            batches = [targets[i : i + BATCH_SIZE] for i in range(0, len(targets), BATCH_SIZE)]
            await run_in_lanes(
                batches,
                request.rollout.max_parallel,
                lane_batch,
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

    async def _batch(
        self, request: ChangeRequest, batch: list[Target], mode: str, width: int | None = None
    ) -> BatchResult:
        """Run one ``TargetBatch`` child; a revert batch's partial results are kept on failure.

        ``width``: the batch's share of ``max_parallel`` (its lane's, see ``wave_window``).
        """
        child_id = ids.batch_id(self._change_id, mode, batch[0].id)
        try:
            result = await workflow.execute_child_workflow(
                TargetBatchWorkflow.run,
                BatchInput(
                    change_id=self._change_id,
                    kind=request.kind,
                    params=request.params,
                    targets=batch,
                    max_parallel=width or request.rollout.max_parallel,
                    mode=mode,
                    mutation_options=(
                        self._mutation_options.model_dump(mode="json")
                        if self._mutation_options
                        else None
                    ),
                ),
                id=child_id,
                static_summary=line(f"{mode} {batch[0].id}..{batch[-1].id} ({len(batch)} targets)"),
            )
        except ChildWorkflowError as exc:
            cause = exc.cause
            if mode == "revert" and isinstance(cause, ApplicationError) and cause.details:
                partial = BatchResult.model_validate(cause.details[0])
                self._status.reverted.extend(partial.done)
                self._needs_repair.extend(f.step for f in partial.failures)
            elif mode == "apply" and isinstance(cause, ApplicationError) and cause.details:
                self._note_batch(BatchResult.model_validate(cause.details[0]), failed=True)
            raise
        if mode == "revert":
            self._status.reverted.extend(result.done)
        else:
            self._note_batch(result)
        return result

    # ---------------------------------------------------------------- point of no return

    def _note_result(self, result: ApplyResult) -> None:
        """Remember targets an irreversible step has changed: nothing may pretend to undo them."""
        if result.irreversible:
            self._irreversible[result.target_id] = list(result.irreversible)

    def _note_error(self, target_id: str, exc: BaseException) -> None:
        """A failed mutation may still have left an irreversible step in effect (its details)."""
        steps = irreversible_in(exc)
        if steps:
            self._irreversible[target_id] = steps

    def _note_batch(self, batch: BatchResult, *, failed: bool = False) -> None:
        """Take a batch's irreversible steps as the change's own: its point of no return.

        Behind a patch: they decide between unwinding and holding, and older workers unwound.
        """
        past = batch.irreversible or (failed and self._irreversible)
        if not past or not workflow.patched(BATCH_IRREVERSIBLE_PATCH):
            return
        self._irreversible.update(batch.irreversible)
        if failed:  # its applied targets are left as they are: a human needs to know them
            self._status.applied.extend(t for t in batch.done if t not in self._status.applied)

    def _repair_list(self) -> list[str]:
        """What a human must repair: each irreversible target with its steps, then the others."""
        marked = [f"{t} ({', '.join(s)})" for t, s in self._irreversible.items()]
        return marked + [t for t in self._status.applied if t not in self._irreversible]

    async def _hold_for_a_human(
        self, exc: BaseException, request: ChangeRequest, ctx: ChangeContext, deadline: datetime
    ) -> ChangeResult:
        """After an irreversible step ran, a failure pauses and pages instead of unwinding.

        The rule (docs/long-running-changes.md): before the first irreversible step a failure
        unwinds the saga as always; once one has run, nothing pretends to undo it. An operator's
        ``abort`` or ``rollback`` then ends the change ``failed`` at once; any other stop (a failed
        mutation, a bake's rollback, a gate that no longer passes) pauses and pages its team:
        ``resume`` rolls forward (gate again, then run the rollout again — applied targets replay
        idempotently, the failed one is retried); ``abort`` or ``rollback`` ends the change
        ``failed`` with exactly which targets and steps need manual repair, undoing nothing. A
        cancellation or a day without a decision ends it the same way.
        """
        while True:
            why = self._stop_reason(exc)
            if isinstance(exc, _Unwind) and exc is self._stop:
                # An operator's abort or rollback is the human decision: end, undoing nothing.
                return await self._end_unrepaired(why)
            if is_cancelled_exception(exc):
                return await self._end_unrepaired(why, cancelled=True)
            self._stop = None
            self._resumed = False
            repair = ", ".join(self._repair_list()[:20])
            await self._page(
                f"{self._change_id} stopped past its point of no return ({why}); irreversible "
                f"steps ran on {repair}: resume to roll forward, or abort to end it failed",
                within=timedelta(minutes=5),
            )
            self._set_phase(
                Phase.PAUSED,
                f"past the point of no return: {why}; irreversible steps ran on {repair}; "
                "resume rolls forward, abort ends the change failed (nothing is undone)",
            )
            try:
                decided = await self._wait(
                    lambda: self._resumed,
                    HUMAN_DECISION_TIMEOUT,
                    summary="wait for resume or abort (past the point of no return)",
                )
            except _Unwind as stop:
                return await self._end_unrepaired(stop.message)
            except asyncio.CancelledError:
                return await self._end_unrepaired("the workflow was cancelled", cancelled=True)
            if not decided:
                return await self._end_unrepaired(
                    f"{why}; nobody decided within {HUMAN_DECISION_TIMEOUT}"
                )
            self._resumed = False
            try:
                report = await self._gate_until_proceed(ctx, deadline, categories=REGATE_CATEGORIES)
                if report is None:
                    raise _Unwind(Outcome.FAILED, self._status.message)
                await self._execute(request, ctx, deadline)
            except BaseException as again:
                if not _compensable(again):
                    raise
                exc = again
                continue
            applied = len(self._status.applied)
            return await self._finish(
                Outcome.COMPLETED, f"rolled forward after a stop; applied to {applied} target(s)"
            )

    def _stop_reason(self, exc: BaseException) -> str:
        if isinstance(exc, _Unwind):
            return exc.message
        if is_cancelled_exception(exc):
            return "the workflow was cancelled"
        message, kind = failure_of(exc)
        return f"{kind}: {message}"

    async def _end_unrepaired(self, why: str, *, cancelled: bool = False) -> ChangeResult:
        """End ``failed`` without undoing anything, naming what needs a human.

        A cancelled run still ends as cancelled (after recording its outcome), as ``_unwind`` does.
        """
        self._needs_repair = self._repair_list()
        shown = ", ".join(self._needs_repair[:50])
        result = await self._finish(
            Outcome.FAILED, f"{why}; nothing was undone; needs a human: {shown}"
        )
        if cancelled:
            raise asyncio.CancelledError(why)
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
            observe.compensations_failed(len(failures), kind=self._request.kind)
            outcome = Outcome.FAILED
            why += f"; {len(failures)} compensation(s) failed: " + ", ".join(
                f.step for f in failures
            )
            # Targets whose own revert failed; a failed batch names its targets in _needs_repair.
            self._needs_repair.extend(f.step for f in failures if not f.step.startswith("batch "))
            repair = ", ".join(self._needs_repair[:50]) or "see the compensation failures"
            why += f"; needs a human: {repair}"
            await self._page(
                f"{self._change_id} FAILED: compensation failed; targets left changed that need "
                f"a human: {repair}"
            )
        result = await self._finish(outcome, why)
        if cancelled:
            raise asyncio.CancelledError(why)  # the run ends as cancelled, after compensating
        return result

    # ---------------------------------------------------------------- bookkeeping

    def _set_phase(self, phase: Phase, message: str, *, awaiting: list[str] | None = None) -> None:
        changed = phase is not self._status.phase or (awaiting or []) != self._status.awaiting_from
        if phase is not self._status.phase:
            self._phase_since = observe.phase_ended(self._status.phase, self._phase_since)
        self._status.retry_after = None  # set again by whoever waits (gate, wave timing)
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
        return change_details(self._change_id, self._status)  # the Web UI's current details

    async def _deadline_passed(self) -> None:
        """Audit (and, if the policy says so, page) a gate that did not pass before the deadline."""
        await self._audit(AuditAction.DEADLINE, "changeguard", reason=self._status.message)
        if (await self._rollout_policy()).page_on_reject:
            await self._page(
                f"{self._change_id} did not pass its gate in time: {self._status.message}"
            )

    def _covered(self, report: GuardrailReport) -> bool:
        """True when the report blocks only on failures that valid approvals cover."""
        return (
            report.decision is Decision.BLOCK
            and approvable(report)
            and not still_needed(report, self._status.approvals, workflow.now())
        )

    async def _release_locks(self, *, ending: bool = False) -> None:
        """Give back every target lock this change holds; shielded, and never fails the change.

        ``ending``: the change is over, so it also leaves every lock queue it may wait in.
        """
        if not self._request.targets or not (self._holds_locks or ending):
            return
        self._holds_locks = False
        release = calls.release_target_locks(
            ReleaseLocksInput(
                change_id=self._change_id,
                target_ids=[t.id for t in self._request.targets],
                leave_queue=ending,
            )
        )
        try:
            await asyncio.shield(release)
        except (ActivityError, asyncio.CancelledError) as exc:
            # The locks' own watch expires them once this workflow has closed.
            workflow.logger.warning("releasing target locks failed", extra={"error": str(exc)})

    async def _finish(self, outcome: Outcome, message: str) -> ChangeResult:
        await self._release_locks(ending=True)
        self._set_phase(_OUTCOME_PHASE[outcome], message)
        self._status.outcome = outcome
        observe.outcome(outcome.value, kind=self._request.kind)
        self._status.needs_repair = list(dict.fromkeys(self._needs_repair))
        await self._audit_from_signal(
            AuditAction.OUTCOME,
            "changeguard",
            reason=excerpt(message, 4000),
            detail={
                "outcome": outcome.value,
                "applied": len(self._status.applied),
                "reverted": len(self._status.reverted),
                "compensation_failures": len(self._status.compensation_failures),
                "needs_repair": self._status.needs_repair[:100],
            },
        )
        await self._events.outcome(outcome.value, message, self._status)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ChangeResult(
            change_id=self._change_id,
            outcome=outcome,
            message=message,
            report=self._status.report,
            applied=self._status.applied,
            reverted=self._status.reverted,
            compensation_failures=self._status.compensation_failures,
            needs_repair=self._status.needs_repair,
        )
