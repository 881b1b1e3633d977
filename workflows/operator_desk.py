"""What the handlers do with what people send: approvals, operator actions, rechecks, refusals.

Deterministic workflow code, composed into ``GuardedChange`` (whose handlers decode and delegate
here). An :class:`OperatorDesk` judges an approval by the pure rules of :mod:`workflows.approvals`
and the signatures of :mod:`workflows.identity`, audits it before it counts (an approval that
cannot be audited is void), verifies signed operator actions, sets the operator's flags on the
:class:`~workflows.change_run.ChangeRun` (stop, resume, recheck), and records what it refuses in
the status (bounded, I10) and the ledger. Validators refuse at once what can be judged without an
activity; a signature is verified in the handler, when the change may have moved on.
"""

from __future__ import annotations

from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import workflows.errors as errors
    import workflows.observe as observe
    from workflows.approvals import approval_problem, grant, still_needed
    from workflows.change_run import ChangeRun, keep_last
    from workflows.identity import IdentityGuard
    from workflows.identity_models import VerifyResult
    from workflows.inputs import Refusal, decode
    from workflows.models import (
        TERMINAL_PHASES,
        Approval,
        ApprovalResult,
        AuditAction,
        OperatorAction,
        OperatorActionResult,
        Outcome,
        Phase,
        RecheckInput,
        RejectedApproval,
    )
    from workflows.types import excerpt
    from workflows.unwind import Unwind, failure_of


def approval_of(args: tuple[Any, ...]) -> Approval | Refusal:
    """The approval an update or signal carries, or why it is malformed."""
    return decode(
        Approval, args, what="the approval", record_fields=("approver", "guardrails", "reason")
    )


def refused(why: str) -> ApplicationError:
    """The non-retryable refusal an update's caller sees."""
    return ApplicationError(why, type=errors.REFUSED, non_retryable=True)


def operator_action(args: tuple[Any, ...]) -> OperatorAction:
    """The operator action of an update, or the refusal its validator raises."""
    action = decode(OperatorAction, args, what="the operator action")
    if isinstance(action, Refusal):
        raise refused(action.why + ' (send {"operator": "<you>", "reason": "<why>"})')
    return action


LATE_STOP_PATCH = "late-stop-honoured"
"""``workflow.patched`` id: an abort or rollback accepted as the last wave ended is honoured."""

REJECTED_STOP_PATCH = "rejected-stop-honoured"
"""``workflow.patched`` id: an abort accepted as the gate's deadline passed is honoured (lazy: the
marker is written only when an operator's action was still being handled, or had stopped the
change, at that moment)."""


class OperatorDesk:
    """Judge, verify, accept or refuse approvals and operator actions; record every refusal."""

    def __init__(self, change: ChangeRun, identity: IdentityGuard) -> None:
        self._change = change
        self._identity = identity

    # ---------------------------------------------------------------- approvals

    def validate(self, approval: Approval | Refusal) -> None:
        """The ``approve`` validator: refuse, with the reason the caller sees, what cannot pass."""
        problem = (
            approval.why
            if isinstance(approval, Refusal)
            else self._identity_problem(approval) or self._problem(approval)
        )
        if problem:
            reason = (
                "malformed" if isinstance(approval, Refusal) else observe.refusal_reason(problem)
            )
            observe.approval_refused(reason, in_validator=True)
            raise refused(problem)

    async def approve(self, approval: Approval) -> ApprovalResult:
        """The ``approve`` update: verify a signed approval now, then accept it (audited)."""
        verified = await self._verify(approval)
        if verified is not None:  # signed: verified now, and the change may have moved on
            problem = verified.why if not verified.ok else self._problem(approval)
            if problem:
                await self._audit_rejected(approval, problem)
                raise refused(problem)
        return await self._accept(approval, verified)

    async def approve_signal(self, approval: Approval | Refusal) -> None:
        """The ``approve_signal`` signal: as the update, but every refusal is recorded instead."""
        change = self._change
        if isinstance(approval, Refusal):
            observe.approval_refused("malformed")
            self._reject(
                approval.why,
                approver=str(approval.fields.get("approver", "")),
                guardrails=list(approval.fields.get("guardrails", [])),
                payload=approval.payload,
            )
            await change.audit_from_signal(
                AuditAction.APPROVAL_REJECTED,
                str(approval.fields.get("approver", "")) or "unknown",
                reason=excerpt(approval.why, 2000),
                detail={"payload": approval.payload},
            )
            return
        problem = self._identity_problem(approval) or self._problem(approval)
        verified = None if problem else await self._verify(approval)
        if verified is not None:  # signed: verified now, and the change may have moved on
            problem = verified.why if not verified.ok else self._problem(approval)
        if problem is None:
            try:
                await self._accept(approval, verified)
                return
            except ActivityError as exc:  # could not be audited: the approval is void
                problem = f"the approval could not be audited ({failure_of(exc)[0]}); send it again"
        observe.approval_refused(observe.refusal_reason(problem))
        self._reject(problem, approver=approval.approver, guardrails=approval.guardrails)
        await self._audit_rejected(approval, problem)

    async def _audit_rejected(self, approval: Approval, problem: str) -> None:
        await self._change.audit_from_signal(
            AuditAction.APPROVAL_REJECTED,
            approval.approver,
            guardrail=excerpt(",".join(approval.guardrails), 1000),
            reason=excerpt(f"{problem} (their reason: {approval.reason})", 4000),
            report_hash=approval.report_hash,
        )

    def _identity_problem(self, approval: Approval) -> str | None:
        return self._identity.approval_problem(approval, self._change.status.report)

    async def _verify(self, approval: Approval) -> VerifyResult | None:
        change = self._change
        return await self._identity.verify_approval(
            change.change_id, approval, change.status.report, change.request.requester
        )

    def _problem(self, approval: Approval) -> str | None:
        change, status = self._change, self._change.status
        return approval_problem(
            approval,
            report=status.report,
            awaiting=status.phase is Phase.AWAITING_APPROVAL,
            directory=change.directory,
            requester=change.request.requester,
            granted=status.approvals,
            now=workflow.now(),
        )

    def _reject(self, why: str, *, approver: str, guardrails: list[str], payload: str = "") -> None:
        """Keep a refused approval signal in the status, bounded (I10)."""
        rejected = self._change.status.rejected_approvals
        rejected.append(
            RejectedApproval(
                approver=excerpt(approver, 128),
                guardrails=[excerpt(g, 128) for g in guardrails[:20]],
                why=excerpt(why, 1000),
                at=workflow.now(),
                payload=payload,
            )
        )
        keep_last(rejected)

    async def _accept(
        self, approval: Approval, verified: VerifyResult | None = None
    ) -> ApprovalResult:
        change, status = self._change, self._change.status
        report = status.report
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
                await change.audit(
                    AuditAction.APPROVAL,
                    g.approver,
                    guardrail=g.guardrail,
                    reason=g.reason,
                    expires_at=g.expires_at,
                    **IdentityGuard.audit_fields(verified),
                )
        except ActivityError:
            if verified is not None:  # void: the same signed approval may be sent again
                self._identity.accepted.pop(verified.digest, None)
            raise
        status.approvals.extend(grants)
        for g in grants:
            observe.approval_accepted(g.guardrail)
        status.still_needed = still_needed(report, status.approvals, workflow.now())
        workflow.set_current_details(change.details())  # the approve JSON names what is left
        return ApprovalResult(
            accepted=[g.guardrail for g in grants], still_needed=status.still_needed
        )

    # ---------------------------------------------------------------- operator actions

    async def recheck(self, args: tuple[Any, ...]) -> None:
        """The ``recheck`` signal: ask the gate loop to gate again; a refusal is only recorded."""
        inp = decode(
            RecheckInput,
            args,
            what="the recheck payload",
            optional=True,
            record_fields=("requested_by",),
        )
        if isinstance(inp, Refusal):
            await self.record_refused_signal("recheck", inp, actor_field="requested_by")
            return
        verified = None
        if inp.signature is not None or self._identity.required.operator_actions:
            verified, why = await self.verify_action("recheck", inp.requested_by, inp)
            if why:
                refusal = Refusal(why, fields={"requested_by": inp.requested_by})
                await self.record_refused_signal("recheck", refusal, actor_field="requested_by")
                return
        workflow.logger.info(f"recheck requested by {inp.requested_by or 'someone'}")
        observe.operator_action("recheck")
        self._change.recheck = True
        await self._change.audit_from_signal(
            AuditAction.RECHECK,
            inp.requested_by or "unknown",
            reason=inp.reason,
            **IdentityGuard.audit_fields(verified),
        )

    async def stop(
        self, audit: AuditAction, outcome: Outcome, args: tuple[Any, ...]
    ) -> OperatorActionResult:
        """The ``abort`` and ``rollback`` updates: verify, audit, then stop the change."""
        action = operator_action(args)
        verified = await self.verified_action(audit.value, action)  # "abort" or "rollback"
        change = self._change
        await change.audit(
            audit, action.operator, reason=action.reason, **IdentityGuard.audit_fields(verified)
        )
        observe.operator_action(audit.value)
        change.stop = Unwind(outcome, f"{audit.value} by {action.operator}: {action.reason}")
        return OperatorActionResult(
            phase=change.status.phase, message=f"{audit.value} requested; unwinding"
        )

    async def resume(self, args: tuple[Any, ...]) -> OperatorActionResult:
        """The ``resume`` update: verify, audit, then let the paused change go on."""
        action = operator_action(args)
        verified = await self.verified_action("resume", action)
        change = self._change
        await change.audit(
            AuditAction.RESUME,
            action.operator,
            reason=action.reason,
            **IdentityGuard.audit_fields(verified),
        )
        observe.operator_action("resume")
        change.resumed = True
        return OperatorActionResult(phase=change.status.phase, message="resuming the bake")

    def refuse_if_ending(self, consequence: str) -> None:
        """Validators: refuse once the change is unwinding or over."""
        change = self._change
        phase = change.status.phase
        if change.stop is not None or phase in TERMINAL_PHASES or phase is Phase.ROLLING_BACK:
            raise refused(f"the change is already {phase.value}; {consequence}")
        if change.completing == "rollout":
            raise refused(
                f"the change has finished its rollout (applied to {len(change.status.applied)} "
                f"target(s)) and is recording its outcome; {consequence}: to undo it, start a "
                "new change"
            )
        if change.completing == "rejected":
            raise refused(
                "the change did not pass its gate before its deadline and is ending rejected; "
                f"{consequence}: nothing was applied"
            )

    async def settle(self) -> None:
        """After the last wave: honour an abort or rollback already accepted; refuse later ones.

        An operator's update accepted while the last wave was ending is still verifying or
        auditing (activities) when the rollout returns; without this the change completed and
        the accepted, audited stop was lost (its caller was told "unwinding"). From here the
        validators refuse new ones (:meth:`refuse_if_ending`); every handler already accepted
        finishes first, and a stop it set raises here, so the change unwinds as any stop does.
        Behind a patch: older workers completed at once.
        """
        if not workflow.patched(LATE_STOP_PATCH):
            return
        change = self._change
        change.completing = "rollout"
        await self._honour_accepted(
            f"the rollout is over (applied to {len(change.status.applied)} target(s))"
        )

    async def settle_rejected(self) -> None:
        """The gate did not pass in time: honour an abort already accepted; refuse later ones.

        An abort accepted while the deadline was being recorded is still auditing when the gate
        loop gives up; without this the change ended ``rejected`` and the accepted, audited abort
        (its caller told "unwinding") was lost. It now ends ``aborted``, as an abort a moment
        earlier did. Behind a lazy patch: a history where no handler was running is unchanged.
        """
        change = self._change
        change.completing = "rejected"  # validators only: no command, the same on replay
        if workflow.all_handlers_finished() and change.stop is None:
            return
        if workflow.patched(REJECTED_STOP_PATCH):
            await self._honour_accepted(
                f"the gate did not pass in time ({change.status.message}); nothing was applied"
            )

    async def _honour_accepted(self, what: str) -> None:
        """Let every accepted handler finish; raise the stop one of them set, if any."""
        change = self._change
        if not workflow.all_handlers_finished():
            change.status.message = (
                f"{what}; an operator's action accepted before it ended is being recorded, and "
                "decides how the change ends"
            )
            await workflow.wait_condition(workflow.all_handlers_finished)
        if change.stop is not None:
            change.completing = ""
            raise change.stop

    def refuse_unsigned(self, name: str, action: OperatorAction) -> None:
        """Validators: refuse an unsigned operator action where one is required, or a replay."""
        problem = self._identity.action_problem(name, action.signature)
        if problem:
            raise refused(problem)

    async def verified_action(self, name: str, action: OperatorAction) -> VerifyResult | None:
        """Update handlers: verify a signed operator action; a refusal is audited and raised."""
        if action.signature is None:
            return None
        verified, why = await self.verify_action(name, action.operator, action)
        if why:
            await self._change.audit_from_signal(
                AuditAction.REFUSED_ACTION,
                action.operator,
                reason=excerpt(f"{name}: {why}", 2000),
                detail={"action": name},
            )
            raise refused(why)
        return verified

    async def verify_action(
        self, name: str, actor: str, payload: OperatorAction | RecheckInput
    ) -> tuple[VerifyResult | None, str]:
        """Verify a signed action's signature: the verification and, if refused, why."""
        return await self._identity.verify_action(
            self._change.change_id, name, actor, payload.reason, payload.signature
        )

    async def record_refused_signal(
        self, signal: str, refusal: Refusal, *, actor_field: str
    ) -> None:
        """A malformed signal changes nothing: it is recorded in the status and the ledger."""
        status = self._change.status
        actor = str(refusal.fields.get(actor_field, "")) or "unknown"
        status.refused_signals.append(f"{signal} from {actor}: {excerpt(refusal.why, 500)}")
        keep_last(status.refused_signals)
        await self._change.audit_from_signal(
            AuditAction.REFUSED_ACTION,
            actor,
            reason=excerpt(f"{signal}: {refusal.why}", 2000),
            detail={"signal": signal, "payload": refusal.payload},
        )
