"""Wire models: the change's own status and result."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    Field,
)

from workflows.identity_models import Signature
from workflows.ids import LOCK_PREFIX as LOCK_PREFIX
from workflows.ids import lock_id as lock_id
from workflows.models.approvals import GrantedApproval, RejectedApproval
from workflows.models.enums import Outcome, Phase
from workflows.models.gate import GuardrailReport
from workflows.models.request import Reason, ShortName, Target
from workflows.rollout_models import SignalReading
from workflows.timing_models import WaveTimingResult
from workflows.types import NAME_MAX, TEXT_MAX, Name, Text
from workflows.types import Duration as Duration
from workflows.types import Strict as Strict
from workflows.types import format_duration as format_duration
from workflows.types import parse_duration as parse_duration

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
