"""Wire models of long-running mutations: activity options per kind, checkpoints, steps, hand-off.

A leaf module (pydantic and the standard library only), shared by workflow code
(:mod:`workflows.mutations`), the change activities, the change kinds, the worker's callback
endpoint and the CLI's pending-work view. New fields always get defaults.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

HEARTBEATS_PER_TIMEOUT = 3
"""A worker that misses this many beats is presumed dead: heartbeat timeout = 3 intervals."""
SUSPICIOUS_AFTER = 2
"""``changeguard status`` marks a mutation suspicious after this many silent intervals."""

HEARTBEAT_THROTTLE = timedelta(seconds=1)
"""The worker's ``max_heartbeat_throttle_interval``: the SDK sends a heartbeat to the server at
most once per ``min(0.8 * heartbeat timeout, this)``. Its default (60 s cap) would send one every
2.4 intervals, so the server's last heartbeat would look older than two intervals (suspicious) and
progress older than it is (stalled) on a healthy mutation; capped at 1 s the server sees every
beat of an interval of 1 s or more, and a checkpointing mutation at most one RPC a second."""

DEFAULT_START_TO_CLOSE = timedelta(minutes=5)
DEFAULT_HEARTBEAT_INTERVAL = timedelta(seconds=10) / HEARTBEATS_PER_TIMEOUT
"""Keeps the heartbeat timeout of kinds that declare nothing at the historical 10 s."""


class MutationOptions(BaseModel):
    """How long one mutation of a kind may run and how often it beats (from ``validate_change``).

    The workflow learns these once, at the start of the change, from the kind and its params; every
    ``apply_change`` / ``revert_change`` of the change is scheduled with them.
    """

    start_to_close: timedelta = DEFAULT_START_TO_CLOSE
    heartbeat_interval: timedelta = DEFAULT_HEARTBEAT_INTERVAL
    stall_after: timedelta | None = Field(
        default=None,
        description="progress unchanged this long, though heartbeats continue, reads 'stalled'",
    )
    apply_many: int = Field(
        default=0,
        description="targets the kind applies in one activity (0: one at a time; apply_many.py)",
    )

    @property
    def heartbeat_timeout(self) -> timedelta:
        """Three intervals: a worker that misses three beats is presumed dead."""
        return self.heartbeat_interval * HEARTBEATS_PER_TIMEOUT


class StepDeclaration(BaseModel):
    """One step of a change on a target, as its kind declares it before anything runs."""

    name: str
    reversible: bool = True
    note: str = Field(default="", description="what the step does, or why it cannot be undone")


class StepRecord(BaseModel):
    """What one step did on one target (carried on ``ApplyResult.steps`` and failure details)."""

    name: str
    reversible: bool = True
    state: str = Field(
        default="applied", description="applied | already (an earlier attempt) | reverted | failed"
    )
    detail: str = ""


class HeartbeatEnvelope(BaseModel):
    """The heartbeat details every mutation sends: a progress checkpoint plus what status needs.

    ``checkpoint`` is the kind's own typed details (dumped to JSON); ``changed_at`` is when it last
    changed, so one ``describe`` tells a stalled mutation (beats, no progress) from a healthy one.
    """

    kind: str = ""
    target: str = ""
    stage: str = ""
    checkpoint: dict[str, Any] | None = None
    seq: int = Field(default=0, description="how many times the checkpoint changed")
    beat_at: datetime | None = None
    changed_at: datetime | None = None
    interval_s: float | None = None
    stall_after_s: float | None = None
    paused: bool = False
    handed_off: bool = Field(default=False, description="an external system does the work now")
    stalled: bool = Field(
        default=False,
        description="self-reported at each beat: progress unchanged for over stall_after_s",
    )
    note: str = Field(default="", description="what the Web UI's heartbeat details should say")


class HandoffTicket(BaseModel):
    """What a callback must present: the task token and the context needed to finish the activity.

    Encoded as base64url JSON into the callback URL and signed with an HMAC (per task: the ticket
    holds the task token), so the external system can report only on the task it was given.
    """

    task_token: str = Field(description="base64url of the activity's task token")
    change_id: str
    run_id: str = ""
    kind: str
    step: str
    target_id: str
    idempotency_key: str
    applied_key: str | None = None
    activity: str = "apply_change"
    interval_s: float | None = Field(default=None, description="the kind's heartbeat interval")
    stall_after_s: float | None = None


class CallbackEvent(BaseModel):
    """The body an external system posts to its callback URL."""

    event: str = Field(pattern="^(progress|done|failed)$")
    details: dict[str, Any] = Field(default_factory=dict, description="progress, or the result")
    error: str = ""
    retryable: bool = False
