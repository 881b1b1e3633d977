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

The class keeps the handlers, the main line and its bookkeeping. Its parts are composed in
``__init__``, each handed the state it uses (:class:`~workflows.change_run.ChangeRun`): the
operator desk, the gate loop, the rollout (wave timing, wave applier, bake monitor) and the
compensation (docs/design.md, "Architecture rules").
"""

from __future__ import annotations

import asyncio
import functools
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    import workflows.observe as observe
    import workflows.search_attributes as sa
    from workflows.bake import BakeMonitor
    from workflows.change_events import ChangeEventEmitter
    from workflows.change_run import ChangeRun
    from workflows.compensation import Compensation, Ending, PointOfNoReturn
    from workflows.gate_loop import GateLoop
    from workflows.identity import IdentityGuard, unsigned_reason
    from workflows.inputs import Refusal, decode
    from workflows.models import (
        ApprovalResult,
        AuditAction,
        ChangeContext,
        ChangeRequest,
        ChangeResult,
        ChangeStatus,
        ClaimChangeInput,
        ClaimChangeResult,
        OperatorActionResult,
        Outcome,
        Phase,
        ValidateChangeInput,
    )
    from workflows.mutations import options_from
    from workflows.operator_desk import OperatorDesk, approval_of, operator_action, refused
    from workflows.paging import Pager
    from workflows.rollout import RolloutRunner
    from workflows.saga import Saga
    from workflows.start import placeholder, start_problem
    from workflows.summaries import line
    from workflows.types import excerpt
    from workflows.unwind import Unwind, compensable, failure_of
    from workflows.wave_apply import WaveApplier
    from workflows.wave_timing import WaveTimingPlanner

DEFAULT_DEADLINE = timedelta(hours=24)

_OUTCOME_PHASE = {
    Outcome.COMPLETED: Phase.COMPLETED,
    Outcome.ROLLED_BACK: Phase.ROLLED_BACK,
    Outcome.ABORTED: Phase.ABORTED,
    Outcome.REJECTED: Phase.REJECTED,
    Outcome.FAILED: Phase.FAILED,
}


@workflow.defn(name="GuardedChange", failure_exception_types=[ValidationError])
class GuardedChangeWorkflow:
    """Run one change behind the guardrail gate, as a compensating saga in waves."""

    @workflow.init
    def __init__(self, *args: Any) -> None:
        # Decoded here, not by the SDK: a payload the SDK cannot decode would fail the task.
        self._change_id = change_id = workflow.info().workflow_id
        decoded = decode(
            ChangeRequest,
            args,
            what="the change request",
            record_fields=("requester", "team", "kind"),
        )
        self._refusal: Refusal | None = decoded if isinstance(decoded, Refusal) else None
        if isinstance(decoded, ChangeRequest):
            self._refusal = start_problem(change_id, decoded, args, workflow.now())
        request = decoded if isinstance(decoded, ChangeRequest) else None
        if request is not None and self._refusal is None:
            request = request.model_copy(update={"change_id": change_id})
        self._change = change = ChangeRun(change_id, request or placeholder(change_id, decoded))
        self._request: ChangeRequest = change.request
        self._status: ChangeStatus = change.status
        self._events = ChangeEventEmitter(change_id)  # docs/change-events.md
        self._identity = IdentityGuard()  # signatures: required where, accepted which
        self._desk = OperatorDesk(change, self._identity)
        self._saga = Saga()
        self._past = PointOfNoReturn(change.status)
        self._pager = pager = Pager(change)
        self._gate = GateLoop(change, pager)
        self._timing = WaveTimingPlanner(change, pager, self._gate)
        self._waves = WaveApplier(change, self._saga, self._past)
        self._bake = BakeMonitor(change, pager)
        self._rollout = RolloutRunner(
            change, self._gate, self._timing, self._waves, self._bake, self._events
        )
        self._compensation = Compensation(change, self._saga, self._past, pager)

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
        await self._desk.recheck(args)

    @workflow.update  # named "abort" after the method (unnamed: the SDK types its result)
    async def abort(self, *args: Any) -> OperatorActionResult:
        """Stop the change and undo everything applied (outcome ``aborted``); audited."""
        return await self._desk.stop(AuditAction.ABORT, Outcome.ABORTED, args)

    @abort.validator
    def validate_abort(self, *args: Any) -> None:
        """Refuse a malformed payload, or when the change is already ending."""
        self._desk.refuse_unsigned("abort", operator_action(args))
        self._desk.refuse_if_ending("there is nothing to abort")

    @workflow.update
    async def rollback(self, *args: Any) -> OperatorActionResult:
        """Undo everything applied (outcome ``rolled_back``); only once mutations have begun."""
        return await self._desk.stop(AuditAction.ROLLBACK, Outcome.ROLLED_BACK, args)

    @rollback.validator
    def validate_rollback(self, *args: Any) -> None:
        """Refuse a malformed payload, before any wave applies (use abort), or when ending."""
        self._desk.refuse_unsigned("rollback", operator_action(args))
        self._desk.refuse_if_ending("there is nothing to roll back")
        # Mutations have begun once a wave applies, though a chunk or a batch in flight reports
        # its targets only when it ends (status.applied lags behind what the targets hold).
        if not self._status.applied and not any(w.state == "applying" for w in self._status.waves):
            raise refused("nothing has been applied yet; use abort to stop this change")

    @workflow.update
    async def resume(self, *args: Any) -> OperatorActionResult:
        """Go on baking after a pause-and-page (the operator judged the signal harmless)."""
        return await self._desk.resume(args)

    @resume.validator
    def validate_resume(self, *args: Any) -> None:
        """Only a paused change can be resumed (and only with a well-formed payload)."""
        self._desk.refuse_unsigned("resume", operator_action(args))
        if self._status.phase is not Phase.PAUSED or self._change.stop is not None:
            raise refused(
                f"the change is {self._status.phase.value}, not Paused; only a paused change "
                "can be resumed"
            )

    @workflow.update
    async def approve(self, *args: Any) -> ApprovalResult:
        """Approve opt-outable failures of the current report (validated first; audited)."""
        approval = approval_of(args)
        if isinstance(approval, Refusal):  # the validator refused it already; belt and braces
            raise refused(approval.why)
        return await self._desk.approve(approval)

    @approve.validator
    def validate_approve(self, *args: Any) -> None:
        """Refuse, with the reason the caller sees at once, what cannot be approved."""
        self._desk.validate(approval_of(args))

    @workflow.signal(name="approve_signal")
    async def approve_signal(self, *args: Any) -> None:
        """The ``approve`` payload for clients that can only signal; refusals are recorded."""
        await self._desk.approve_signal(approval_of(args))

    # ---------------------------------------------------------------- main line

    @workflow.run
    async def run(self, *args: Any) -> ChangeResult:
        """Refuse a bad or reused start; else gate, execute in waves, bake, finish with one outcome."""
        with observe.span(
            "change", observe.change_attributes(self._request), expected=(Unwind,)
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
            await self._timing.until_not_before(request)
            report = await self._gate.until_proceed(ctx, deadline, categories=None)
            if report is None:
                why = self._status.message
                await self._desk.settle_rejected()  # an abort accepted just now still counts
                return await self._finish(Outcome.REJECTED, why)
            await self._rollout.execute(request, ctx, deadline)
            await self._desk.settle()  # an abort or rollback accepted just now still counts
        except BaseException as exc:
            if not compensable(exc):
                raise
            if self._past.irreversible:  # past the point of no return: a human decides
                roll_forward = functools.partial(self._roll_forward, request, ctx, deadline)
                return await self._end(await self._compensation.hold_for_a_human(exc, roll_forward))
            return await self._end(await self._compensation.unwind(exc))
        applied = len(self._status.applied)
        return await self._finish(Outcome.COMPLETED, f"applied to {applied} target(s)")

    async def _roll_forward(
        self, request: ChangeRequest, ctx: ChangeContext, deadline: datetime
    ) -> None:
        """``resume`` past the point of no return: the rollout again, then settle its stops."""
        await self._rollout.roll_forward(request, ctx, deadline)
        await self._desk.settle()

    async def _refuse(self, why: str, *, payload: str = "") -> ChangeResult:
        """End ``rejected`` before any check or mutation; the refusal is in the ledger."""
        why = excerpt(why, 4000)
        detail: dict[str, Any] = {"payload": payload} if payload else {}
        await self._change.audit_from_signal(
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
        self._waves.options = options_from(result)  # the kind's timeouts and heartbeats
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

    # ---------------------------------------------------------------- bookkeeping

    async def _end(self, ending: Ending) -> ChangeResult:
        """Finish a stopped change as its compensation decided; a cancelled run then ends so."""
        result = await self._finish(ending.outcome, ending.message)
        if ending.cancelled is not None:
            raise asyncio.CancelledError(ending.cancelled)
        return result

    async def _finish(self, outcome: Outcome, message: str) -> ChangeResult:
        status = self._status
        await self._gate.release_locks(ending=True)
        self._change.set_phase(_OUTCOME_PHASE[outcome], message)
        status.outcome = outcome
        observe.outcome(outcome.value, kind=self._request.kind)
        status.needs_repair = list(dict.fromkeys(self._past.needs_repair))
        await self._change.audit_from_signal(
            AuditAction.OUTCOME,
            "changeguard",
            reason=excerpt(message, 4000),
            detail={
                "outcome": outcome.value,
                "applied": len(status.applied),
                "reverted": len(status.reverted),
                "compensation_failures": len(status.compensation_failures),
                "needs_repair": status.needs_repair[:100],
            },
        )
        await self._events.outcome(outcome.value, message, status)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return ChangeResult(
            change_id=self._change_id,
            outcome=outcome,
            message=message,
            report=status.report,
            applied=status.applied,
            reverted=status.reverted,
            compensation_failures=status.compensation_failures,
            needs_repair=status.needs_repair,
        )
