"""Wire models: enumerations."""

from __future__ import annotations

from enum import StrEnum

from workflows.ids import LOCK_PREFIX as LOCK_PREFIX
from workflows.ids import lock_id as lock_id
from workflows.types import Duration as Duration
from workflows.types import Strict as Strict
from workflows.types import format_duration as format_duration
from workflows.types import parse_duration as parse_duration

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
