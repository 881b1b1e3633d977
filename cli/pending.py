"""Is a running mutation alive and progressing? Pure functions over the server's describe() data.

A mutation heartbeats a :class:`~workflows.progress_models.HeartbeatEnvelope` (its checkpoint,
when the checkpoint last changed, its heartbeat interval and its kind's stall time). From one
``describe`` of the workflow:

- **suspicious**: the last heartbeat is older than two intervals (three is the heartbeat timeout,
  when the server presumes the worker dead and retries the attempt); says how long ago. The server
  receives a beat up to ``HEARTBEAT_THROTTLE`` (1 s) after it was sent (the SDK's throttle), so
  that much is allowed on top: a 1 s interval is not suspicious at 2.0 s;
- **stalled**: heartbeats still arrive, but the checkpoint has not changed for the kind's
  ``stall_after`` (a statement stuck on a lock, a job that stopped moving);
- **paused** (Temporal's activity pause) and **handed off** (an external job reports through the
  callback endpoint) are shown as such.

``cli.main.pending_work`` builds each ``PendingWork`` with ``**liveness(p, now=now)``.

A hung worker is exactly when an operator runs ``changeguard status``, and then the ``status``
query may find no worker to answer it (the workflow sits in the hung worker's sticky cache, or no
other worker runs). The command then asks the query with a short timeout and, unanswered, shows
what the server alone knows (:func:`unanswered`): the phase from the ``ChangePhase`` search
attribute and the pending work from ``describe`` — which is where a suspicious mutation shows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import WorkflowExecutionDescription
from temporalio.service import RPCError, RPCStatusCode

from workflows import search_attributes as sa
from workflows.models import ChangeStatus, Phase
from workflows.progress_models import HEARTBEAT_THROTTLE, SUSPICIOUS_AFTER, HeartbeatEnvelope

__all__ = ["QUERY_TIMEOUT", "classify", "envelope_of", "liveness", "unanswered", "went_unanswered"]

THROTTLE_S = HEARTBEAT_THROTTLE.total_seconds()
QUERY_TIMEOUT = timedelta(seconds=10)
"""How long ``changeguard status`` waits for a worker to answer the ``status`` query."""


def envelope_of(p: PendingActivityInfo) -> HeartbeatEnvelope | None:
    """The last heartbeat's envelope, if it is one (JSON payloads only; anything else: None)."""
    if not p.HasField("heartbeat_details") or not p.heartbeat_details.payloads:
        return None
    payload = p.heartbeat_details.payloads[0]
    if payload.metadata.get("encoding", b"") != b"json/plain":
        return None
    try:
        raw = json.loads(payload.data)
        return HeartbeatEnvelope.model_validate(raw) if isinstance(raw, dict) else None
    except (ValueError, ValidationError):
        return None


def classify(
    envelope: HeartbeatEnvelope | None,
    *,
    last_heartbeat: datetime | None,
    now: datetime,
    running: bool = True,
    paused: bool = False,
) -> dict[str, Any]:
    """The liveness fields of ``PendingWork`` from an envelope and the server's last beat time."""
    out: dict[str, Any] = {"paused": paused}
    notes = []
    silent = None if last_heartbeat is None else max(0.0, (now - last_heartbeat).total_seconds())
    out["last_heartbeat_s_ago"] = None if silent is None else round(silent, 1)
    if envelope is not None:
        out.update(
            target=envelope.target,
            stage=envelope.stage,
            progress=envelope.checkpoint or {},
            handed_off=envelope.handed_off,
        )
        paused = paused or envelope.paused
        out["paused"] = paused
    interval = envelope.interval_s if envelope is not None else None
    if running and not paused and silent is not None and interval:
        out["suspicious"] = silent > SUSPICIOUS_AFTER * interval + THROTTLE_S
    if out.get("suspicious") and silent is not None and interval:
        notes.append(
            f"suspicious: no heartbeat for {silent:.0f}s (beats every {interval:g}s; "
            f"retried after {3 * interval:g}s)"
        )
    if envelope is not None and envelope.changed_at is not None:
        unchanged = max(0.0, (now - envelope.changed_at).total_seconds())
        out["unchanged_for_s"] = round(unchanged, 1)
        stall = envelope.stall_after_s
        if running and not paused and not out.get("suspicious") and stall and unchanged > stall:
            out["stalled"] = True
            notes.append(
                f"stalled: heartbeats continue but progress has not changed for {unchanged:.0f}s "
                f"(stage {envelope.stage or '?'}; the kind allows {stall:g}s)"
            )
    if paused:
        notes.append("paused: resumes from its last checkpoint when the activity is unpaused")
    if envelope is not None and envelope.handed_off:
        notes.append("handed off: an external job reports through the callback endpoint")
    out["note"] = "; ".join(notes)
    return out


def liveness(p: PendingActivityInfo, *, now: datetime | None = None) -> dict[str, Any]:
    """``PendingWork`` fields for one pending activity of ``describe().raw_description``."""
    now = now or datetime.now(UTC)
    last = p.last_heartbeat_time.ToDatetime(UTC) if p.HasField("last_heartbeat_time") else None
    running = p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED  # only it beats
    paused = bool(p.paused) or p.state == PendingActivityState.PENDING_ACTIVITY_STATE_PAUSED
    return classify(envelope_of(p), last_heartbeat=last, now=now, running=running, paused=paused)


def went_unanswered(exc: RPCError) -> bool:
    """Whether a query failed because no worker answered (not: no such change).

    In time (``DEADLINE_EXCEEDED``, or the client's own timeout, ``CANCELLED``), or at all: the
    server's "no poller seen for task queue recently, worker may be down" (``FAILED_PRECONDITION``).
    """
    return exc.status in (
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.FAILED_PRECONDITION,
    )


def unanswered(
    desc: WorkflowExecutionDescription, change_id: str, why: str, *, refused: bool = False
) -> ChangeStatus:
    """The status the server alone can give when no worker answers the ``status`` query.

    ``refused``: the server itself refused the query because the change's latest workflow task
    failed and is being retried (:func:`changeguard.client.not_ready`), not for want of a worker.
    """
    attrs = desc.typed_search_attributes
    raw_phase = attrs.get(sa.CHANGE_PHASE)
    phase = Phase(raw_phase) if raw_phase in {p.value for p in Phase} else Phase.PENDING
    return ChangeStatus(
        change_id=change_id,
        kind=attrs.get(sa.CHANGE_KIND) or "",
        phase=phase,
        message=(
            (
                f"the server refused the status query ({why}): the change's latest workflow task "
                "failed and is being retried — a burst of large signals does this for a moment, "
                "a worker that fails every attempt for good (the Web UI's history shows "
                "WorkflowTaskFailed and its cause); the phase is the server's last record "
                "(ChangePhase)"
            )
            if refused
            else (
                f"no worker answered the status query ({why}): the phase is the server's last "
                "record (ChangePhase); the pending work below is live — look for suspicious workers"
            )
        ),
    )
