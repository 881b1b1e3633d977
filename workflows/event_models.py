"""Change events for incident tooling: the payloads of ``ChangeEvents`` and ``send_change_event``.

A leaf module (pydantic and the standard library only). The event is what the workflow knows;
the activity adds what the worker holds (the sink's routing key, the event's source and the
link to the change in the Web UI) and sends it in PagerDuty Events v2 "change event" shape
(docs/change-events.md). Fields are unconstrained on purpose: these models are built in workflow
code, where a validation error would fail a task (I10); :func:`bounded_summary` keeps the summary
within the shape's 1,024 characters.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

SUMMARY_MAX = 1024
"""PagerDuty's limit for ``payload.summary``."""


class ChangeEvent(BaseModel):
    """One event of a change: it started, a wave began or ended, or it reached its outcome."""

    change_id: str
    seq: int = Field(description="1, 2, … in the order the change emitted them")
    event: str = Field(description="started | wave_started | wave_finished | outcome")
    summary: str
    timestamp: datetime
    final: bool = Field(default=False, description="the last event of the change (its outcome)")
    details: dict[str, Any] = Field(default_factory=dict, description="payload.custom_details")


class ChangeEventsInput(BaseModel):
    """Input of the ``ChangeEvents`` workflow: the change's first event."""

    change_id: str
    first: ChangeEvent


class SendChangeEventResult(BaseModel):
    """Output of ``send_change_event``."""

    sent: bool = Field(description="False when this worker has no sink configured")
    status: int = 0
    detail: str = ""


def bounded_summary(text: str) -> str:
    """One line of at most :data:`SUMMARY_MAX` characters."""
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def payload_of(
    event: ChangeEvent, *, routing_key: str, source: str, link: str | None
) -> dict[str, Any]:
    """The PagerDuty Events v2 change event for ``event``."""
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "payload": {
            "summary": bounded_summary(event.summary),
            "timestamp": event.timestamp.isoformat(),
            "source": source,
            "custom_details": {
                "change_id": event.change_id,
                "event": event.event,
                "seq": event.seq,
                **event.details,
            },
        },
    }
    if link:
        body["links"] = [{"href": link, "text": f"{event.change_id} in the Temporal Web UI"}]
    return body
