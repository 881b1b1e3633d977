"""Wire models: every payload that crosses a workflow, activity, signal, update or query boundary.

This is a leaf module: it imports only pydantic, the standard library and its sibling leaf
:mod:`workflows.types`, so workflow code, activities,
guardrails, the CLI and tests can all share it. New fields always get defaults, so histories recorded
by older workers still decode.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    Field,
    field_validator,
)

from workflows.identity_models import IdentityRequirements, OperatorKeys, Signature
from workflows.ids import LOCK_PREFIX as LOCK_PREFIX
from workflows.ids import lock_id as lock_id
from workflows.rollout_models import SignalReading
from workflows.timing_models import WaveTimingResult
from workflows.types import NAME_MAX, TEXT_MAX, Name, Text
from workflows.types import Duration as Duration
from workflows.types import Strict as Strict
from workflows.types import format_duration as format_duration
from workflows.types import parse_duration as parse_duration

# --------------------------------------------------------------------------------------------------
# Enumerations
# --------------------------------------------------------------------------------------------------


class Category(StrEnum):
    """What question a guardrail answers."""

    TIMING = "timing"
    CONCURRENCY = "concurrency"
    HEALTH = "health"
    TARGET_STATE = "target_state"
    IN_FLIGHT = "in_flight"


class CheckStatus(StrEnum):
    """Outcome of one guardrail check; ``error`` means the check itself failed (fail-closed)."""

    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"
    ERROR = "error"


class OptOut(StrEnum):
    """Whether a failing check may be bypassed by an audited approval."""

    APPROVABLE = "approvable"
    FORBIDDEN = "forbidden"


class Mode(StrEnum):
    """``enforce`` checks decide; ``shadow`` checks are reported as "would have blocked" only."""

    ENFORCE = "enforce"
    SHADOW = "shadow"


class Decision(StrEnum):
    """The gate's single verdict."""

    PROCEED = "proceed"
    WAIT = "wait"
    BLOCK = "block"


class Phase(StrEnum):
    """Where a change is; mirrored into the ``ChangePhase`` search attribute."""

    PENDING = "Pending"
    GATING = "Gating"
    WAITING = "Waiting"
    AWAITING_APPROVAL = "AwaitingApproval"
    BLOCKED = "Blocked"
    EXECUTING = "Executing"
    BAKING = "Baking"
    PAUSED = "Paused"
    ROLLING_BACK = "RollingBack"
    COMPLETED = "Completed"
    ROLLED_BACK = "RolledBack"
    ABORTED = "Aborted"
    REJECTED = "Rejected"
    FAILED = "Failed"


class Outcome(StrEnum):
    """The one terminal outcome of a change."""

    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"
    REJECTED = "rejected"
    FAILED = "failed"


TERMINAL_PHASES = frozenset(
    {Phase.COMPLETED, Phase.ROLLED_BACK, Phase.ABORTED, Phase.REJECTED, Phase.FAILED}
)

# --------------------------------------------------------------------------------------------------
# The change request (validated at the edge)
# --------------------------------------------------------------------------------------------------

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_WAVE = re.compile(r"^(\d+)(%?)$")
ID_RULE = (
    "1-128 characters of letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
)

ShortName = Annotated[Name, Field(min_length=1, max_length=NAME_MAX)]
"""A bounded name (person, team, environment, kind, rule id)."""
Reason = Annotated[Text, Field(min_length=1, max_length=TEXT_MAX)]
"""A bounded, non-empty free-text reason."""
LabelKey = Annotated[Name, Field(min_length=1, max_length=63)]
LabelValue = Annotated[Name, Field(max_length=256)]

TARGET_IDS_MAX_CHARS = 400_000
"""The status and the result list applied and reverted target ids: they must stay under 2 MB."""
REQUEST_MAX_BYTES = 1_000_000
"""A change request larger than this (as JSON) is refused: Temporal refuses payloads over 2 MB,
and the request's parts travel again in the gate's and batches' inputs."""


def valid_id(value: str) -> bool:
    """Whether a change or target id has the accepted shape (see :data:`ID_RULE`)."""
    return bool(_ID.match(value))


class Target(Strict):
    """One thing a change mutates (a host, a service, a database)."""

    id: str
    environment: ShortName | None = Field(
        default=None, description="defaults to the change's environment"
    )
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError(f"target id must be {ID_RULE}")
        return v


class Rollout(Strict):
    """How a change is applied: cumulative waves, parallelism within a wave, bake after each."""

    waves: list[str] = Field(
        default_factory=lambda: ["1", "25%", "100%"],
        description="cumulative sizes: a target count ('1') or a share of all targets ('25%')",
        max_length=20,
    )
    max_parallel: int = Field(default=5, ge=1, le=100)
    bake: Duration = timedelta(seconds=0)

    @field_validator("bake")
    @classmethod
    def _bake_bound(cls, v: timedelta) -> timedelta:
        if v > timedelta(days=7):
            raise ValueError("bake must be at most 7d")
        return v

    @field_validator("waves", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return [str(w) for w in v] if isinstance(v, list) else v

    @field_validator("waves")
    @classmethod
    def _wave_shape(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one wave is needed, e.g. ['1', '25%', '100%']")
        for w in v:
            m = _WAVE.match(w.strip()) if len(w) <= 12 else None
            if not m or int(m.group(1)) == 0 or (m.group(2) and int(m.group(1)) > 100):
                raise ValueError(
                    f"wave {w!r} must be a positive target count ('3') or a share 1-100% ('25%')"
                )
        if v[-1].strip() != "100%":
            raise ValueError("the last wave must be '100%' so that every target is covered")
        return [w.strip() for w in v]


def plan_waves(target_ids: list[str], waves: list[str]) -> list[list[str]]:
    """Split targets into waves; each spec is a cumulative size; empty waves are dropped."""
    n = len(target_ids)
    plan: list[list[str]] = []
    done = 0
    for spec in waves:
        m = _WAVE.match(spec)
        assert m is not None, spec
        size = int(m.group(1))
        upto = math.ceil(n * size / 100) if m.group(2) else size
        upto = max(done, min(n, upto))
        if upto > done:
            plan.append(target_ids[done:upto])
            done = upto
    return plan


class ChangeRequest(Strict):
    """A request to change some targets; the input of the ``GuardedChange`` workflow.

    ``change_id`` is the workflow id. It may be omitted (the workflow takes its own id); when given
    it must equal the workflow id. Nothing here draws a random or time-based default: such a
    default would be drawn again at every decode of the input, and differ on replay. Ids are
    generated at the edge (the CLI, the client library) only.
    """

    change_id: str | None = Field(
        default=None, description="the workflow id; omitted, the workflow's own id is used"
    )
    kind: ShortName
    summary: Text = Field(min_length=1, max_length=500)
    requester: ShortName
    team: ShortName
    environment: ShortName
    targets: list[Target] = Field(min_length=1, max_length=10_000)
    params: dict[str, Any] = Field(default_factory=dict)
    rollout: Rollout = Field(default_factory=Rollout)
    policy: dict[str, Any] | None = Field(
        default=None,
        description=(
            "rules and signals this change adds to the platform's policy bundle, inline (the CLI "
            "inlines a file); workers never read a path from a request"
        ),
    )
    signature: Signature | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="the requester's signature of this request (changeguard start --sign)",
    )
    deadline: datetime | None = Field(
        default=None, description="when the gate must have passed; default 24h after start"
    )
    not_before: datetime | None = Field(
        default=None,
        description=(
            "schedule the change: it waits until then before its gate (at most 90 days ahead; "
            "the default deadline counts from it)"
        ),
    )

    @field_validator("change_id")
    @classmethod
    def _change_id_shape(cls, v: str | None) -> str | None:
        if v is not None and not _ID.match(v):
            raise ValueError(f"change_id must be {ID_RULE}")
        return v

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_inline(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(
                "policy must be the rules inline (a mapping); workers never read a path from a "
                "request (the changeguard CLI inlines a file for you)"
            )
        return v

    @field_validator("deadline")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("deadline needs a time zone, e.g. 2026-12-01T18:00:00Z")
        return v

    @field_validator("not_before")
    @classmethod
    def _not_before_aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("not_before needs a time zone, e.g. 2026-12-01T18:00:00Z")
        return v

    @field_validator("targets")
    @classmethod
    def _targets_unique(cls, targets: list[Target]) -> list[Target]:
        seen: set[str] = set()
        dupes = sorted({t.id for t in targets if t.id in seen or seen.add(t.id)})  # type: ignore[func-returns-value]
        if dupes:
            shown = ", ".join(dupes[:20]) + (
                f" and {len(dupes) - 20} more" if len(dupes) > 20 else ""
            )
            raise ValueError(f"targets listed twice: {shown}")
        total = sum(len(t.id) for t in targets)
        if total > TARGET_IDS_MAX_CHARS:
            raise ValueError(
                f"the target ids take {total:,} characters together; at most "
                f"{TARGET_IDS_MAX_CHARS:,} are accepted (the status and result list them)"
            )
        return targets

    def target_environment(self, target: Target) -> str:
        """The environment a target lives in (its own, else the change's)."""
        return target.environment or self.environment

    def digest(self) -> str:
        """A stable digest of the request, for the ledger (what exactly was asked)."""
        dumped = self.model_dump(mode="json")
        if dumped.get("not_before") is None:
            dumped.pop("not_before", None)  # digests of requests without it stay as they were
        canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class ChangeContext(BaseModel):
    """What a guardrail or change kind may know about the change it is judging."""

    change_id: str
    kind: str
    summary: str = ""
    requester: str = ""
    team: str = ""
    environment: str
    targets: list[Target] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    deadline: datetime | None = None

    @classmethod
    def of(cls, request: ChangeRequest, change_id: str | None = None) -> ChangeContext:
        """Build the context from a validated request (``change_id``: the workflow id)."""
        cid = change_id or request.change_id
        assert cid is not None, "a change's context needs its id (the workflow id)"
        return cls(
            change_id=cid,
            kind=request.kind,
            summary=request.summary,
            requester=request.requester,
            team=request.team,
            environment=request.environment,
            targets=request.targets,
            params=request.params,
            deadline=request.deadline,
        )


# --------------------------------------------------------------------------------------------------
# Gate: policy resolution, check results, the report
# --------------------------------------------------------------------------------------------------


class OptOutRule(Strict):
    """Who may approve a failing check, and under what terms."""

    approvers: list[str] = Field(min_length=1, description="operator groups allowed to approve")
    distinct_from_requester: bool = True
    max_duration: Duration = timedelta(hours=4)
    required: int = Field(default=1, ge=1, le=10, description="distinct approvals needed")
    require_signed: bool = Field(
        default=False,
        exclude_if=lambda v: not v,  # unchanged policies keep their hashes
        description="only signed approvals count (docs/approvals.md)",
    )


class CheckSpec(BaseModel):
    """One applicable check, fully resolved from the policy and the guardrail's defaults."""

    rule: str = Field(default="", description="the policy rule's id (default: the plug-in name)")
    source: str = Field(default="platform", description="'platform' (the bundle) or 'request'")
    note: str = Field(
        default="", description="the bundle's reason: for a floor rule it shadows or opens up"
    )
    guardrail: str
    category: Category
    params: dict[str, Any] = Field(default_factory=dict)
    owner: str
    timeout: Duration = timedelta(seconds=30)
    mode: Mode = Mode.ENFORCE
    opt_out: OptOut = OptOut.APPROVABLE
    opt_out_rule: OptOutRule | None = None


class ResolvePolicyInput(BaseModel):
    """Input of ``resolve_policy``: the change, and the rules its request adds to the bundle."""

    change: ChangeContext
    policy: dict[str, Any] | None = Field(
        default=None, description="the request's additions to the platform bundle"
    )
    categories: list[Category] | None = Field(
        default=None, description="only checks of these categories (re-checks before a wave)"
    )


class ResolvedPolicy(BaseModel):
    """Output of ``resolve_policy``: the applicable checks in a stable order."""

    policy_hash: str
    checks: list[CheckSpec]
    source: str = "inline"
    bundle_hash: str = Field(default="", description="the platform bundle's hash")
    bundle_warning: str = Field(
        default="", description="why the worker still judges by an older bundle (a refused edit)"
    )


class RunCheckInput(BaseModel):
    """Input of ``run_check``: one check against one change."""

    spec: CheckSpec
    change: ChangeContext
    now: datetime
    probe_only: bool = False


class CheckResult(BaseModel):
    """One guardrail's verdict; every non-passing result says why, what would pass, and who owns it."""

    rule: str = Field(default="", description="the policy rule's id; approvals name it")
    source: str = "platform"
    note: str = ""
    guardrail: str
    category: Category
    status: CheckStatus
    reason: str = ""
    remedy: str = ""
    owner: str = ""
    opt_out: OptOut = OptOut.APPROVABLE
    approvers: list[str] = Field(default_factory=list)
    retry_after: datetime | None = None
    evidence: dict[str, Any] = Field(default_factory=dict)
    duration_ms: int = 0
    mode: Mode = Mode.ENFORCE
    approval: OptOutRule | None = Field(
        default=None, description="the terms on which this failure may be approved, if approvable"
    )

    @property
    def passing(self) -> bool:
        """True for ``pass``."""
        return self.status is CheckStatus.PASS

    @property
    def rule_id(self) -> str:
        """The rule id (results recorded before rule ids existed use the plug-in name)."""
        return self.rule or self.guardrail


class GuardrailReport(BaseModel):
    """Every check's result and the one decision drawn from them."""

    decision: Decision
    report_hash: str
    evaluated_at: datetime
    checks: list[CheckResult]
    policy_hash: str = ""
    retry_after: datetime | None = None
    retry_zone: str = Field(
        default="", description="the time zone of the timing rule that set retry_after"
    )
    bundle_hash: str = Field(default="", description="the platform bundle the gate judged by")
    bundle_warning: str = Field(
        default="", description="why the worker still judges by an older bundle (a refused edit)"
    )

    @property
    def failures(self) -> list[CheckResult]:
        """The enforced checks that did not pass and do not merely ask to wait."""
        return [
            c
            for c in self.checks
            if c.mode is Mode.ENFORCE and c.status in (CheckStatus.FAIL, CheckStatus.ERROR)
        ]


def report_hash(checks: list[CheckResult], policy_hash: str) -> str:
    """A stable digest of which checks do not pass, and how, that an approval binds to.

    Reasons, evidence and timings are left out: they may carry the clock ("Sat 10:00 is outside
    the window"), and the same failures re-evaluated a minute later must give the same hash, or
    every recheck would make approvals stale. The policy hash is in: a new policy is a new report.
    """
    material = [
        {
            "g": c.rule_id,
            "s": c.status.value,
            "m": c.mode.value,
        }
        for c in checks
        if not c.passing
    ]
    digest = hashlib.sha256(
        json.dumps({"p": policy_hash, "c": material}, sort_keys=True).encode()
    ).hexdigest()
    return digest[:16]


class GateInput(BaseModel):
    """Input of the ``GuardrailGate`` workflow."""

    change: ChangeContext
    policy: dict[str, Any] | None = None
    categories: list[Category] | None = None
    probe_only: bool = Field(
        default=False,
        description="report what checks find without taking anything (no locks): `checks` runs",
    )


# --------------------------------------------------------------------------------------------------
# Change kinds: mutation, compensation, description
# --------------------------------------------------------------------------------------------------


def idempotency_key(change_id: str, step: str, target_id: str) -> str:
    """The key every side effect carries: the same (change, step, target) never applies twice."""
    return f"{change_id}:{step}:{target_id}"


class ApplyInput(BaseModel):
    """Input of ``apply_change`` and ``revert_change`` for one target."""

    change_id: str
    kind: str
    step: str
    target: Target
    params: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    applied_key: str | None = Field(
        default=None, description="for a compensation: the key of the step it undoes"
    )


class ApplyResult(BaseModel):
    """What a mutation (or its compensation) did to one target."""

    target_id: str
    applied: bool
    detail: str = ""
    before: dict[str, Any] = Field(default_factory=dict)
    after: dict[str, Any] = Field(default_factory=dict)
    replayed: bool = Field(
        default=False,
        description="an earlier attempt with this idempotency key already had the effect",
    )
    steps: list[dict[str, Any]] = Field(
        default_factory=list,
        description="per step, what it did (workflows.progress_models.StepRecord as JSON)",
    )
    irreversible: list[str] = Field(
        default_factory=list,
        description="irreversible steps in effect on the target: past its point of no return",
    )

    @property
    def took_effect(self) -> bool:
        """The effect of this key is in place: made now (``applied``) or by an earlier attempt."""
        return self.applied or self.replayed


class DescribeInput(BaseModel):
    """Input of ``describe_target``."""

    kind: str
    target: Target
    params: dict[str, Any] = Field(default_factory=dict)


class TargetState(BaseModel):
    """A change kind's view of one target."""

    target_id: str
    reachable: bool
    healthy: bool
    version: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------
# The change's own status and result
# --------------------------------------------------------------------------------------------------


class CompensationFailure(BaseModel):
    """A compensation that failed during unwinding: reported, never hidden."""

    step: str
    error: str
    error_type: str = ""


class WaveProgress(BaseModel):
    """One wave's targets and what happened to them."""

    index: int
    targets: list[str]
    applied: list[str] = Field(default_factory=list)
    state: str = "pending"


class PendingWork(BaseModel):
    """An activity the server is still running or retrying for a change (from describe)."""

    activity: str
    attempt: int = 1
    state: str = ""
    last_failure: str = ""
    next_attempt_in_s: float | None = None
    target: str = ""
    stage: str = ""
    progress: dict[str, Any] = Field(default_factory=dict, description="the last checkpoint")
    last_heartbeat_s_ago: float | None = None
    suspicious: bool = Field(default=False, description="no heartbeat for over two intervals")
    stalled: bool = Field(
        default=False, description="heartbeats continue but progress has not changed for long"
    )
    unchanged_for_s: float | None = None
    paused: bool = False
    handed_off: bool = False
    note: str = ""


class ChangeStatus(BaseModel):
    """The ``status`` query: everything an operator needs to see at once."""

    change_id: str
    kind: str = ""
    phase: Phase = Phase.PENDING
    outcome: Outcome | None = None
    message: str = ""
    report: GuardrailReport | None = Field(
        default=None, description="the full gate's report (or a re-check's, when that one blocks)"
    )
    last_gate: GuardrailReport | None = Field(
        default=None, description="the most recent gate run, re-checks before waves included"
    )
    gate_runs: int = 0
    waves: list[WaveProgress] = Field(default_factory=list)
    applied: list[str] = Field(default_factory=list)
    reverted: list[str] = Field(default_factory=list)
    compensation_failures: list[CompensationFailure] = Field(default_factory=list)
    awaiting_from: list[str] = Field(default_factory=list)
    still_needed: dict[str, int] = Field(
        default_factory=dict, description="guardrail → approvals still missing"
    )
    approvals: list[GrantedApproval] = Field(default_factory=list)
    rejected_approvals: list[RejectedApproval] = Field(default_factory=list)
    signals: list[SignalReading] = Field(
        default_factory=list, description="the latest health readings while baking"
    )
    pages: list[str] = Field(default_factory=list, description="pages sent, as one line each")
    audit_failures: list[str] = Field(
        default_factory=list, description="audit writes that failed from signal handlers"
    )
    refused_signals: list[str] = Field(
        default_factory=list, description="signals refused for a malformed payload (the latest)"
    )
    needs_repair: list[str] = Field(
        default_factory=list, description="targets left changed that need a human (failed)"
    )
    pending: list[PendingWork] = Field(
        default_factory=list,
        description="filled by clients from the server (not by the workflow): retrying activities",
    )
    updated_at: datetime | None = None
    retry_after: datetime | None = Field(
        default=None, description="when a waiting (scheduled) change goes on by itself"
    )
    retry_zone: str = Field(default="", description="the zone retry_after is shown in")
    wave_timing: WaveTimingResult | None = Field(
        default=None, description="the last wave's timing answer when it did not fit"
    )


class ChangeResult(BaseModel):
    """The ``GuardedChange`` workflow's result."""

    change_id: str
    outcome: Outcome
    message: str = ""
    report: GuardrailReport | None = None
    applied: list[str] = Field(default_factory=list)
    reverted: list[str] = Field(default_factory=list)
    compensation_failures: list[CompensationFailure] = Field(default_factory=list)
    needs_repair: list[str] = Field(
        default_factory=list, description="targets left changed that need a human (outcome failed)"
    )


class ValidateChangeInput(BaseModel):
    """Input of ``validate_change``: the checks only the worker can make (the change kind's params)."""

    kind: str
    params: dict[str, Any] = Field(default_factory=dict)


class ValidateChangeResult(BaseModel):
    """Output of ``validate_change``: every problem found, empty when valid."""

    problems: list[str] = Field(default_factory=list)
    reversible: bool = True
    start_to_close: timedelta | None = Field(
        default=None, description="the kind's start-to-close timeout of one mutation"
    )
    heartbeat_interval: timedelta | None = Field(
        default=None, description="the kind's heartbeat interval (the timeout is three intervals)"
    )
    stall_after: timedelta | None = Field(
        default=None, description="progress unchanged this long, beats continuing, is 'stalled'"
    )
    steps: list[dict[str, Any]] = Field(
        default_factory=list,
        description="the kind's steps per target (workflows.progress_models.StepDeclaration)",
    )
    change_events: bool = Field(
        default=False, description="the worker has a change-event sink (docs/change-events.md)"
    )
    irreversible_steps: list[str] = Field(
        default_factory=list, description="names of the steps that cannot be undone, in order"
    )
    apply_many: int = Field(
        default=0, description="targets the kind applies in one activity (0: one at a time)"
    )


# ``LOCK_PREFIX`` and ``lock_id`` live in workflows/ids.py (imported above, re-exported here).


class LockHolder(BaseModel):
    """Who holds a target lock (or waits in its queue)."""

    change_id: str = Field(max_length=NAME_MAX, description="the lock workflow checks its shape")
    team: str = Field(default="", max_length=NAME_MAX)
    kind: str = Field(default="", max_length=NAME_MAX)
    since: datetime | None = None


class TargetLockInput(BaseModel):
    """Input of the ``TargetLock`` workflow (id ``lock/<target>``): one lock, one holder."""

    target_id: str
    holder: LockHolder
    watch_every: Duration = timedelta(seconds=60)
    queue: list[LockHolder] = Field(
        default_factory=list, description="changes waiting for this lock, first come first served"
    )


class ReleaseLocksInput(BaseModel):
    """Input of ``release_target_locks`` and the ``release`` signal's owner check."""

    change_id: str
    target_ids: list[str] = Field(default_factory=list)
    leave_queue: bool = Field(
        default=False, description="also leave each lock's queue (the change is ending)"
    )


class HolderAliveInput(BaseModel):
    """Input of ``holder_alive``: is this change's workflow still running?"""

    change_id: str


class BatchInput(BaseModel):
    """Input of the ``TargetBatch`` child workflow: one slice of a large wave."""

    change_id: str
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)
    targets: list[Target]
    max_parallel: int = 5
    mode: str = Field(default="apply", pattern="^(apply|revert)$")
    mutation_options: dict[str, Any] | None = Field(
        default=None, description="the change kind's activity options (MutationOptions as JSON)"
    )


class BatchResult(BaseModel):
    """What a ``TargetBatch`` did: targets applied (apply mode) or actually reverted (revert)."""

    done: list[str] = Field(default_factory=list)
    failures: list[CompensationFailure] = Field(default_factory=list)
    irreversible: dict[str, list[str]] = Field(
        default_factory=dict,
        description="apply mode: per target, the irreversible steps in effect (the parent's "
        "point of no return); also in the details of a failed batch that ran one",
    )


class OperatorAction(BaseModel):
    """Payload of the ``abort``, ``rollback`` and ``resume`` updates: who acts, and why."""

    operator: ShortName
    reason: Reason
    signature: Signature | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="the operator's signature (--sign)",
    )


class OperatorActionResult(BaseModel):
    """What an operator update did."""

    accepted: bool = True
    phase: Phase
    message: str = ""


class RecheckInput(BaseModel):
    """Payload of the ``recheck`` signal."""

    requested_by: Annotated[Name, Field(max_length=NAME_MAX)] = ""
    reason: Annotated[Text, Field(max_length=TEXT_MAX)] = ""
    signature: Signature | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="the operator's signature (changeguard recheck --sign)",
    )
