"""Change events: the ``ChangeEvents`` workflow that delivers them, and the change's emitter.

Incident responders ask "what changed?": a change tells the worker's sink (docs/change-events.md)
when it starts, when each wave begins and ends, and its outcome. Delivery must never delay or fail
the change, and the outcome must still arrive after the change has closed. So the change does not
send anything itself: its first event starts a ``ChangeEvents`` child (id ``<change>/events``)
with parent-close policy ``ABANDON``, and every later event is a signal to it. Starting a child and
signalling it are answered by the Temporal server, never by the sink: a sink that is down delays
nothing. The child sends its events one at a time, in the order the change emitted them, each
``send_change_event`` retried with jittered backoff for up to :data:`DELIVERY_LIMIT`; an event
that still cannot be delivered is dropped (logged) and the next one goes. It ends after the
outcome, or after :data:`IDLE_LIMIT` without events (a change terminated without an outcome).

The change emits only when the worker that validated it has a sink (``ValidateChangeResult``
says so) and behind ``workflow.patched(EVENTS_PATCH)``: histories recorded before change events
existed, or without a sink, replay unchanged.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    import workflows.errors as errors
    import workflows.ids as ids
    from workflows.calls import DELIVERY_LIMIT as DELIVERY_LIMIT
    from workflows.event_models import ChangeEvent, ChangeEventsInput
    from workflows.inputs import Refusal, decode
    from workflows.unwind import failure_of

EVENTS_PATCH = "change-events"
"""The ``workflow.patched`` id of the change-event commands (docs/versioning.md)."""
IDLE_LIMIT = timedelta(days=7)
"""The child ends when no event arrived for this long."""


@workflow.defn(name="ChangeEvents", failure_exception_types=[ValidationError])
class ChangeEventsWorkflow:
    """Deliver one change's events to the sink, in order, never holding the change up."""

    def __init__(self) -> None:
        self._pending: dict[int, ChangeEvent] = {}
        self._refused = 0

    @workflow.signal(name="event")
    def event(self, *args: Any) -> None:
        """One more event of the change; a malformed payload is counted and dropped."""
        ev = decode(ChangeEvent, args, what="the change event")
        if isinstance(ev, Refusal):
            self._refused += 1
            workflow.logger.warning(f"change event refused: {ev.why}")
            return
        self._pending.setdefault(ev.seq, ev)

    @workflow.run
    async def run(self, *args: Any) -> str:
        """Send the first event, then each signalled one, until the outcome has gone."""
        inp = decode(ChangeEventsInput, args, what="the change events input")
        if isinstance(inp, Refusal):
            raise ApplicationError(inp.why, type=errors.INVALID_INPUT, non_retryable=True)
        self._pending.setdefault(inp.first.seq, inp.first)
        delivered, dropped = 0, 0
        while True:
            try:
                await workflow.wait_condition(
                    lambda: bool(self._pending),
                    timeout=IDLE_LIMIT,
                    timeout_summary="wait for the next change event",
                )
            except TimeoutError:
                break
            ev = self._pending.pop(min(self._pending))
            if await self._send(ev):
                delivered += 1
            else:
                dropped += 1
            if ev.final and not self._pending:
                break
        return f"{delivered} delivered, {dropped} dropped, {self._refused} refused"

    async def _send(self, ev: ChangeEvent) -> bool:
        try:
            result = await calls.send_change_event(ev, summary=f"send {ev.event} event #{ev.seq}")
        except ActivityError as exc:
            message, _ = failure_of(exc)
            workflow.logger.warning(f"change event #{ev.seq} ({ev.event}) dropped: {message}")
            return False
        return result.sent


class ChangeEventEmitter:
    """The change's side: start the ``ChangeEvents`` child, then signal it (never raises)."""

    def __init__(self, change_id: str) -> None:
        self._change_id = change_id
        self._enabled = False
        self._seq = 0
        self._child: workflow.ChildWorkflowHandle[Any, Any] | None = None

    def enable(self, sink_configured: bool) -> None:
        """Emit from now on if the worker has a sink (and the code path is patched in)."""
        self._enabled = sink_configured and workflow.patched(EVENTS_PATCH)

    async def emit(
        self, event: str, summary: str, details: dict[str, Any], *, final: bool = False
    ) -> None:
        """Hand one event over for delivery; only a ``started`` event starts the child.

        A failure to start or signal the child (the server refused it) is logged and ignored: a
        change event never fails or holds the change. A cancellation still propagates.
        """
        if not self._enabled or (self._child is None and event != "started"):
            return
        self._seq += 1
        ev = ChangeEvent(
            change_id=self._change_id,
            seq=self._seq,
            event=event,
            summary=summary,
            timestamp=workflow.now(),
            final=final,
            details=details,
        )
        try:
            if self._child is None:
                self._child = await workflow.start_child_workflow(
                    ChangeEventsWorkflow.run,
                    ChangeEventsInput(change_id=self._change_id, first=ev),
                    id=ids.events_id(self._change_id),
                    parent_close_policy=workflow.ParentClosePolicy.ABANDON,
                    static_summary=f"change events of {self._change_id}"[:200],
                )
            else:
                await self._child.signal(ChangeEventsWorkflow.event, ev)
        except Exception as exc:
            self._enabled = self._child is not None
            workflow.logger.warning(f"change event {event} not handed over: {exc}")

    # ------------------------------------------------------------ the events a change emits

    async def started(self, request: Any, deadline: Any) -> None:
        """The change claimed its id and starts gating."""
        ids = [t.id for t in request.targets]
        await self.emit(
            "started",
            f"{self._change_id} started: {request.kind} {request.summary!r} on {len(ids)} "
            f"target(s) in {request.environment} (team {request.team}, by {request.requester})",
            {
                "kind": request.kind,
                "summary": request.summary[:500],
                "environment": request.environment,
                "team": request.team,
                "requester": request.requester,
                "targets": len(ids),
                "first_targets": ids[:20],
                "deadline": deadline.isoformat() if deadline else None,
            },
        )

    async def wave(self, event: str, index: int, waves: int, targets: list[str]) -> None:
        """A wave began (``wave_started``) or ended, baked (``wave_finished``)."""
        verb = "started" if event == "wave_started" else "finished"
        shown = ", ".join(targets[:5]) + (
            f" and {len(targets) - 5} more" if len(targets) > 5 else ""
        )
        await self.emit(
            event,
            f"{self._change_id} wave {index + 1}/{waves} {verb}: {len(targets)} target(s) ({shown})",
            {
                "wave": index + 1,
                "waves": waves,
                "targets": len(targets),
                "first_targets": targets[:20],
            },
        )

    async def outcome(self, outcome: str, message: str, status: Any) -> None:
        """The change's one terminal outcome (the last event)."""
        await self.emit(
            "outcome",
            f"{self._change_id} {outcome}: {message}",
            {
                "outcome": outcome,
                "message": message[:1000],
                "applied": len(status.applied),
                "reverted": len(status.reverted),
                "compensation_failures": len(status.compensation_failures),
                "needs_repair": list(status.needs_repair[:20]),
            },
            final=True,
        )
