"""Verified identity inside ``GuardedChange``: when a signature is required, and verifying one.

Deterministic workflow-side rules (docs/approvals.md, I11). The verification itself is the
``verify_signature`` activity (``activities/identity.py``): it reads the operator directory as it
is now, so a removed key stops counting at once. This module decides *whether* to call it — only
when a payload carries a signature or the policy requires one, so that unsigned changes under a
policy without ``identity`` settings emit exactly the commands they always did — and remembers
which signed documents were accepted, so that none counts twice (replay).

What the policy can require (``IdentityRequirements``, taken from the bundle when the change id is
claimed): signed ``approvals``, ``operator_actions`` (abort, rollback, resume, recheck) and
``requests`` (the start). A rule's ``opt_out: {require_signed: true}`` requires signed approvals
of that rule alone.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError

import workflows.calls as calls
from workflows.identity_models import (
    IdentityRequirements,
    Signature,
    SignedDocument,
    VerifyInput,
    VerifyResult,
    document_digest,
    parse_stamp,
)
from workflows.models import Approval, ChangeRequest, GuardrailReport
from workflows.types import excerpt
from workflows.unwind import failure_of

SIGN_HINT = {
    "approve": "changeguard approve --sign",
    "start": "changeguard start --sign",
    "recheck": "changeguard recheck --sign",
}


def unsigned_reason(action: str) -> str:
    """The refusal of an unsigned payload where a signature is required."""
    hint = SIGN_HINT.get(action, f"changeguard {action} --sign")
    return f"unsigned: sign it with {hint}"


def request_digest(request: ChangeRequest) -> str:
    """The digest a signed request covers: the request as decoded, without its signature."""
    canonical = json.dumps(
        request.model_dump(mode="json", exclude={"signature"}),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def approval_document(approval: Approval, change_id: str, expires_at: str = "") -> SignedDocument:
    """The document a signed approval must carry (``expires_at`` is the signer's choice)."""
    return SignedDocument(
        action="approve",
        change_id=change_id,
        actor=approval.approver,
        reason=approval.reason,
        report_hash=approval.report_hash,
        rules=sorted(set(approval.guardrails)),
        expires_at=expires_at or "1970-01-01T00:00:00Z",
    )


def action_document(
    action: str, change_id: str, actor: str, reason: str, expires_at: str = ""
) -> SignedDocument:
    """The document a signed operator action (or recheck) must carry."""
    return SignedDocument(
        action=action,
        change_id=change_id,
        actor=actor,
        reason=reason,
        expires_at=expires_at or "1970-01-01T00:00:00Z",
    )


def start_document(request: ChangeRequest, change_id: str, expires_at: str = "") -> SignedDocument:
    """The document a signed change request must carry."""
    return SignedDocument(
        action="start",
        change_id=change_id,
        actor=request.requester,
        request_digest=request_digest(request),
        expires_at=expires_at or "1970-01-01T00:00:00Z",
    )


class IdentityGuard:
    """The identity state of one change: what is required, who requested, what was accepted."""

    def __init__(self) -> None:
        self.required = IdentityRequirements()
        self.requester_identity = ""
        self.accepted: dict[str, str] = {}  # signed document digest → when it was accepted

    # ------------------------------------------------------------------ synchronous (validators)

    def approval_signing_required(self, approval: Approval, report: GuardrailReport | None) -> bool:
        """Whether this approval must be signed: the bundle says so, or a named rule does."""
        if self.required.approvals:
            return True
        failing = {c.rule_id: c for c in (report.failures if report else [])}
        return any(
            (rule := failing[name].approval) is not None and rule.require_signed
            for name in approval.guardrails
            if name in failing
        )

    def problem(self, signature: Signature | None, *, action: str, required: bool) -> str | None:
        """Refusals that need no verification: unsigned where required, or a replay."""
        if signature is None:
            return unsigned_reason(action) if required else None
        digest = document_digest(signature.document)
        if digest in self.accepted:
            return (
                f"replay: this signed {signature.document.action} was accepted already at "
                f"{self.accepted[digest]}; sign a new one"
            )
        return None

    def approval_problem(self, approval: Approval, report: GuardrailReport | None) -> str | None:
        """An approval's refusal that needs no verification (unsigned where required, replay)."""
        required = self.approval_signing_required(approval, report)
        return self.problem(approval.signature, action="approve", required=required)

    def action_problem(self, name: str, signature: Signature | None) -> str | None:
        """An operator action's refusal that needs no verification."""
        return self.problem(signature, action=name, required=self.required.operator_actions)

    # ------------------------------------------------------------------ verification (activity)

    async def verify_approval(
        self,
        change_id: str,
        approval: Approval,
        report: GuardrailReport | None,
        requester: str,
    ) -> VerifyResult | None:
        """Verify a signed approval (``None`` when it is unsigned); four eyes by identity."""
        if approval.signature is None:
            return None
        return await self.verify(
            change_id,
            approval.signature,
            approval_document(approval, change_id),
            requester=requester,
            four_eyes=self.four_eyes(approval, report),
        )

    async def verify_action(
        self, change_id: str, name: str, actor: str, reason: str, signature: Signature | None
    ) -> tuple[VerifyResult | None, str]:
        """Verify an operator action or recheck: (the accepted result, or why it is refused)."""
        problem = self.action_problem(name, signature)
        if problem or signature is None:
            return None, problem or ""
        expected = action_document(name, change_id, actor, reason)
        result = await self.verify(change_id, signature, expected)
        if not result.ok:
            return None, result.why
        self.accept(result)
        return result, ""

    async def verify_request(self, change_id: str, request: ChangeRequest) -> str:
        """Verify a signed request; its identity is the requester's for four eyes. Why refused."""
        assert request.signature is not None
        expected = start_document(request, change_id)
        result = await self.verify(change_id, request.signature, expected)
        if not result.ok:
            return f"the change request's signature does not count: {result.why}"
        self.requester_identity = result.identity
        self.accept(result)
        return ""

    async def verify(
        self,
        change_id: str,
        signature: Signature,
        expected: SignedDocument,
        *,
        requester: str = "",
        four_eyes: bool = False,
    ) -> VerifyResult:
        """Verify in the ``verify_signature`` activity; then refuse a replay that raced it.

        An activity that fails for good (a JWKS that stays unreachable, an invalid directory) is a
        refusal too: it must not escape a signal handler, where it would fail the whole run (I10).
        """
        try:
            result = await calls.verify_signature(
                VerifyInput(
                    change_id=change_id,
                    signature=signature,
                    expected=expected,
                    now=workflow.now(),
                    requester=requester,
                    requester_identity=self.requester_identity,
                    four_eyes=four_eyes,
                ),
                summary=f"verify the signature of {expected.action} by {expected.actor}"[:200],
            )
        except ActivityError as exc:
            message, _ = failure_of(exc)
            return VerifyResult(
                ok=False,
                why=excerpt(
                    f"unverified: the signature could not be checked ({message}); send it again",
                    1000,
                ),
                digest=document_digest(signature.document),
            )
        if result.ok:
            again = self.problem(signature, action=expected.action, required=False)
            if again:
                return result.model_copy(update={"ok": False, "why": again})
        return result

    def accept(self, result: VerifyResult) -> None:
        """Remember an accepted signed document: it can never count again (replay)."""
        self.accepted[result.digest] = workflow.now().isoformat(timespec="seconds")

    @staticmethod
    def four_eyes(approval: Approval, report: GuardrailReport | None) -> bool:
        """Whether any rule approved wants four eyes (then the requester's key cannot approve)."""
        failing = {c.rule_id: c for c in (report.failures if report else [])}
        return any(
            (rule := failing[name].approval) is not None and rule.distinct_from_requester
            for name in approval.guardrails
            if name in failing
        )

    @staticmethod
    def capped(approval: Approval, now: datetime) -> Approval:
        """A signed approval grants nothing beyond its signature's expiry."""
        if approval.signature is None:
            return approval
        left = parse_stamp(approval.signature.document.expires_at) - now
        return approval.model_copy(update={"expires_in": min(approval.expires_in, left)})

    @classmethod
    def audit_fields(cls, verified: VerifyResult | None) -> dict[str, Any]:
        """``detail=`` for an audit record of a verified payload; nothing for an unsigned one."""
        return {"detail": cls.detail(verified)} if verified is not None else {}

    @staticmethod
    def detail(result: VerifyResult | None) -> dict[str, Any]:
        """What the ledger records of a verified signature (nothing for an unsigned payload)."""
        if result is None:
            return {}
        out: dict[str, Any] = {
            "identity": result.identity,
            "method": result.method,
            "signed_digest": result.digest,
        }
        if result.issuer:
            out["issuer"] = result.issuer
        return out
