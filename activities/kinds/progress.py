"""The progress handle a change kind's ``apply`` / ``revert_if_applied`` receives.

``checkpoint(details)`` records typed progress (a pydantic model) and heartbeats it at once; a
background task keeps beating it every interval (a third of the heartbeat timeout). A retried
attempt finds the last checkpoint of the attempt before it in :attr:`Progress.resumed_from`, typed
by the kind's ``checkpoint_model``: a hint of where to continue, never the truth (the attempt may
have done more after its last beat, or the checkpoint may be older than what was committed), so a
kind re-reads the real state before it continues.

Every heartbeat carries a :class:`~workflows.progress_models.HeartbeatEnvelope`, so one
``describe`` of the workflow tells a stalled mutation (beats, no progress) from a dead one (no
beats): see :mod:`cli.pending`. Each beat also says by itself, for the Web UI's pending-activity
details, whether progress has stood still past the kind's stall time (``stalled``, ``note``); a
silent worker cannot say it is silent, so *suspicious* is left to the observer (``changeguard
status``, and the UI's own "last heartbeat" time).

Pause versus cancel: Temporal's activity pause reaches an activity only as a cancellation whose
``activity.cancellation_details().paused`` is set. :meth:`Progress.stopping` tells them apart; the
change activities turn a pause into a retryable ``MutationPaused`` failure carrying the last
checkpoint (the server schedules no new attempt until the activity is unpaused, and that attempt
resumes from it), while a cancel propagates as a cancellation and the saga compensates.
"""

from __future__ import annotations

import contextvars
import logging
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio import activity

from activities.kinds import handoff
from activities.resilience import Heartbeat
from workflows.models import ApplyInput
from workflows.progress_models import HeartbeatEnvelope, MutationOptions

C = TypeVar("C", bound=BaseModel)

log = logging.getLogger(__name__)

_current: contextvars.ContextVar[Progress[Any] | None] = contextvars.ContextVar(
    "changeguard_progress", default=None
)


def current_progress() -> Progress[Any] | None:
    """The progress handle of the running mutation, if any (for helpers deep in a kind)."""
    return _current.get()


def last_envelope() -> HeartbeatEnvelope | None:
    """The previous attempt's last heartbeat details, if it sent any we can read."""
    if not activity.in_activity():
        return None
    details = activity.info().heartbeat_details
    if not details:
        return None
    raw = details[0]
    if isinstance(raw, BaseModel):
        raw = raw.model_dump(mode="json")
    if not isinstance(raw, dict):
        return None
    try:
        return HeartbeatEnvelope.model_validate(raw)
    except ValidationError:
        return None


class Progress(Generic[C]):
    """Checkpointed heartbeats for one mutation attempt; an async context manager.

    Outside an activity (a kind tested alone, a script) it records checkpoints without beating.

    Args:
        kind: the change kind's name.
        target: the target's id.
        checkpoint_model: the kind's checkpoint model (validates ``resumed_from``).
        options: the kind's activity options (the interval and stall time go into every beat).
        resumed_from: override the previous checkpoint (tests, scripts); default: read from the
            activity's heartbeat details.
        request: the mutation's input (hand-off tickets need it).
        stage: the first stage reported.
    """

    def __init__(
        self,
        *,
        kind: str,
        target: str,
        checkpoint_model: type[C] | None = None,
        options: MutationOptions | None = None,
        resumed_from: C | None = None,
        request: ApplyInput | None = None,
        stage: str = "started",
    ) -> None:
        self.kind = kind
        self.request = request
        self.target = target
        self.checkpoint_model = checkpoint_model
        self.options = options or MutationOptions()
        previous = last_envelope()
        self.resumed_from: C | None = resumed_from
        if resumed_from is None and previous is not None and previous.checkpoint is not None:
            self.resumed_from = self._parse(previous.checkpoint)
        self._seq = previous.seq if previous is not None else 0
        self.latest: C | None = self.resumed_from
        self._envelope = HeartbeatEnvelope(
            kind=kind,
            target=target,
            stage=stage,
            checkpoint=None if self.latest is None else self.latest.model_dump(mode="json"),
            seq=self._seq,
            changed_at=datetime.now(UTC),
            interval_s=self.options.heartbeat_interval.total_seconds(),
            stall_after_s=(
                None
                if self.options.stall_after is None
                else self.options.stall_after.total_seconds()
            ),
        )
        self._beat = Heartbeat(refresh=self._live, **self._details())
        self._token: contextvars.Token[Progress[Any] | None] | None = None

    def _parse(self, raw: dict[str, Any]) -> C | None:
        if self.checkpoint_model is None:
            return None
        try:
            return self.checkpoint_model.model_validate(raw)
        except ValidationError as exc:  # a checkpoint of another build: start from real state
            log.warning(
                "ignoring an unreadable checkpoint of %s on %s: %s", self.kind, self.target, exc
            )
            return None

    @property
    def attempt(self) -> int:
        """The activity attempt (from 1), or 1 outside an activity."""
        return activity.info().attempt if activity.in_activity() else 1

    @property
    def envelope(self) -> HeartbeatEnvelope:
        """The details the next heartbeat sends: now, and whether progress stands still."""
        now = datetime.now(UTC)
        update: dict[str, Any] = {"beat_at": now, "stalled": False, "note": ""}
        stall, changed = self._envelope.stall_after_s, self._envelope.changed_at
        if stall and changed is not None and not self._envelope.handed_off:
            unchanged = (now - changed).total_seconds()
            if unchanged > stall:
                update["stalled"] = True
                update["note"] = (
                    f"stalled: progress unchanged for {unchanged:.0f}s (stage "
                    f"{self._envelope.stage or '?'}; the kind allows {stall:g}s)"
                )
        return self._envelope.model_copy(update=update)

    def _details(self) -> dict[str, Any]:
        # The checkpoint is JSON already (dumped once when it was recorded): not dumped again.
        envelope = self.envelope
        details = envelope.model_dump(mode="json", exclude={"checkpoint"})
        details["checkpoint"] = envelope.checkpoint
        return details

    def _live(self) -> dict[str, Any]:
        """The fields a background beat refreshes (the rest may carry a nested kind's stage)."""
        return {k: v for k, v in self._details().items() if k in ("beat_at", "stalled", "note")}

    def checkpoint(
        self, details: C, *, stage: str | None = None, dumped: dict[str, Any] | None = None
    ) -> None:
        """Record progress and heartbeat it now (``changed_at`` moves only when it changed).

        ``dumped``: ``details.model_dump(mode="json")`` when the caller has it already (a caller
        that checkpoints a growing collection dumps each new item once instead of all of them
        again); a new dict each time, never changed afterwards (the heartbeat sends it later).
        """
        if dumped is None:
            dumped = details.model_dump(mode="json")
        update: dict[str, Any] = {}
        if dumped != self._envelope.checkpoint:
            self._seq += 1
            update = {"checkpoint": dumped, "seq": self._seq, "changed_at": datetime.now(UTC)}
        if stage is not None:
            update["stage"] = stage
        self.latest = details
        self._envelope = self._envelope.model_copy(update=update)
        self._beat.update(**self._details())

    def stage(self, name: str) -> None:
        """Say what the mutation does now (not progress: ``changed_at`` stays)."""
        self._envelope = self._envelope.model_copy(update={"stage": name})
        self._beat.update(**self._details())

    def mark(self, **fields: Any) -> None:
        """Set envelope fields (``paused``, ``handed_off``) and beat them."""
        self._envelope = self._envelope.model_copy(update=fields)
        self._beat.update(**self._details())

    def callback_url(self) -> str:
        """The signed callback URL of this attempt, for an external system (see ``handoff``)."""
        if self.request is None:
            raise RuntimeError("hand-off needs the mutation's input (Progress(request=...))")
        return handoff.callback_url(self.request, options=self.options)

    def hand_off(self) -> NoReturn:
        """Say the work now runs elsewhere, then end the attempt's work: the callback completes it."""
        self.mark(handed_off=True, stage="handed_off")
        handoff.complete_async()

    @staticmethod
    def stopping() -> str | None:
        """Why the server asked this attempt to stop: ``paused``, ``cancelled``, … or None."""
        if not activity.in_activity():
            return None
        details = activity.cancellation_details()
        if details is None:
            return None
        for reason in ("paused", "reset", "cancel_requested", "timed_out", "worker_shutdown"):
            if getattr(details, reason, False):
                return "cancelled" if reason == "cancel_requested" else reason
        return "not_found" if details.not_found else None

    async def __aenter__(self) -> Progress[C]:
        self._token = _current.set(self)
        await self._beat.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._beat.__aexit__(exc_type, exc, tb)
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
