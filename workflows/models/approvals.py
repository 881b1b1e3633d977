"""Wire models: approvals, the operator directory, the audit trail."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import (
    BaseModel,
    Field,
)

from workflows.identity_models import IdentityRequirements, OperatorKeys, Signature
from workflows.ids import LOCK_PREFIX as LOCK_PREFIX
from workflows.ids import lock_id as lock_id
from workflows.models.request import Reason, ShortName
from workflows.types import Duration as Duration
from workflows.types import Strict as Strict
from workflows.types import format_duration as format_duration
from workflows.types import parse_duration as parse_duration

# Approvals, the operator directory, the audit trail
# --------------------------------------------------------------------------------------------------


class Approval(BaseModel):
    """Payload of the ``approve`` update and the ``approve_signal`` signal.

    The approver's groups come from the operator directory, never from this payload. Workflow code
    cannot see who sent a signal or update, so the approver is named here and checked against the
    directory and the policy; deployments authenticate callers in front of Temporal (docs/approvals.md).
    """

    guardrails: list[ShortName] = Field(
        min_length=1, max_length=50, description="rule ids of the failing checks approved"
    )
    approver: ShortName
    reason: Reason
    report_hash: str = Field(
        min_length=1, max_length=64, description="the report this approval is bound to"
    )
    expires_in: Duration = Field(
        default=timedelta(hours=1), description="capped by the policy's max_duration"
    )
    signature: Signature | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="the approver's signature (changeguard approve --sign)",
    )


class GrantedApproval(BaseModel):
    """An accepted approval as the change keeps it: who, what, bound to which report, until when."""

    guardrail: str
    approver: str
    reason: str
    report_hash: str
    approved_at: datetime
    expires_at: datetime
    signature: dict[str, str] = Field(
        default_factory=dict, description="the approved report's failures: guardrail → status"
    )
    verified_by: str = Field(default="", description="the verified key fingerprint or OIDC subject")


class RejectedApproval(BaseModel):
    """An approval (signal) that was refused, and why: signals cannot be refused to the caller.

    Fields are excerpts (bounded) of what was sent, which may not even have been an approval.
    """

    approver: str = ""
    guardrails: list[str] = Field(default_factory=list)
    why: str
    at: datetime
    payload: str = Field(default="", description="an excerpt of a payload that did not decode")


class ApprovalResult(BaseModel):
    """The ``approve`` update's answer."""

    accepted: list[str] = Field(default_factory=list)
    still_needed: dict[str, int] = Field(
        default_factory=dict, description="guardrail → approvals still missing"
    )


class Operator(BaseModel):
    """One person in the operator directory."""

    name: str
    groups: list[str] = Field(default_factory=list)


class Directory(BaseModel):
    """The operator directory as loaded by ``load_directory`` (validators read it, never fetch it)."""

    operators: dict[str, list[str]] = Field(default_factory=dict, description="name → groups")
    source: str = ""
    identities: dict[str, OperatorKeys] = Field(
        default_factory=dict, description="name → the keys and OIDC identities that sign for them"
    )

    def groups_of(self, name: str) -> list[str]:
        """The groups an operator belongs to (empty for an unknown name)."""
        return self.operators.get(name, [])


class LoadDirectoryInput(BaseModel):
    """Input of ``load_directory``."""

    change_id: str


class AuditAction(StrEnum):
    """What an audit (change ledger) record records."""

    APPROVAL = "approval"
    APPROVAL_REJECTED = "approval_rejected"
    RECHECK = "recheck"
    RESUME = "resume"
    ROLLBACK = "rollback"
    ABORT = "abort"
    DEADLINE = "deadline"
    STARTED = "started"  # the claim of a change id: one per change id, ever
    REFUSED = "refused"  # a start refused before any check: invalid input, a used change id
    GATE = "gate"  # one gate decision: report hash, failing rule ids
    MUTATION = "mutation"  # a mutation that took effect on one target
    COMPENSATION = "compensation"  # a compensation that took effect on one target
    OUTCOME = "outcome"  # the change's one terminal outcome
    REFUSED_ACTION = "refused_action"  # a signal or operator action refused (payload excerpt)
    PLAN = "plan"  # the wave plan, before the first mutation (behind workflow.patched)


class AuditRecord(BaseModel):
    """One durable audit entry; ``record_id`` makes writing it idempotent."""

    record_id: str = Field(description="unique per event; a retried write with it adds nothing")
    action: AuditAction
    actor: str
    at: datetime
    change_id: str
    run_id: str = ""
    guardrail: str = ""
    policy_hash: str = ""
    report_hash: str = ""
    reason: str = ""
    expires_at: datetime | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class ClaimChangeInput(BaseModel):
    """Input of ``claim_change``: take a change id for one run chain, once and for all.

    ``run_id`` is the run chain's first run (``workflow.info().first_execution_run_id``), which a
    Temporal reset keeps: a reset run continues its change under the same claim.
    """

    change_id: str
    run_id: str
    at: datetime
    requester: str = ""
    team: str = ""
    request_digest: str = ""
    requester_identity: str = Field(default="", description="the signed request's verified key")


class ClaimChangeResult(BaseModel):
    """Output of ``claim_change``: whether this run chain holds the id, and who claimed it."""

    claimed: bool
    run_id: str = Field(description="the run chain that holds the id")
    at: datetime | None = Field(default=None, description="when it was claimed")
    bundle_hash: str = Field(default="", description="the platform bundle the worker holds")
    identity: IdentityRequirements = Field(
        default_factory=IdentityRequirements, description="where the bundle requires signatures"
    )


class AuditQuery(BaseModel):
    """Input of listing audit records."""

    change_id: str | None = None
    limit: int = Field(default=1000, ge=1, le=100_000)
    since: datetime | None = Field(default=None, description="only records at or after this time")
    actions: list[AuditAction] = Field(
        default_factory=list, description="only records of these actions (empty: every action)"
    )
