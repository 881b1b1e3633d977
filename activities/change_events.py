"""``send_change_event``: deliver one change event to the worker's sink, PagerDuty Events v2 shape.

The sink is a worker setting (``CHANGEGUARD_CHANGE_EVENTS_URL`` and
``CHANGEGUARD_CHANGE_EVENTS_ROUTING_KEY``, docs/change-events.md): the routing key is a
credential and never enters a workflow history. The activity adds it, the event's ``source`` and
the link to the change in the Web UI, and POSTs the JSON. A 2xx answer is delivery; a timeout, a
refused connection, 429 or 5xx raises a retryable ``TargetUnavailable`` with a jittered
``next_retry_delay`` (the ``ChangeEvents`` workflow bounds the retries); any other 4xx is
non-retryable ``InvalidInput`` (a wrong routing key does not get better). A worker without a sink
answers ``sent=False`` and sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.resilience import retryable_error
from workflows.errors import INVALID_INPUT, TARGET_UNAVAILABLE
from workflows.event_models import ChangeEvent, SendChangeEventResult, payload_of

SEND_CHANGE_EVENT = "send_change_event"
BODY_EXCERPT = 200

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ChangeEventSink:
    """Where change events go.

    Attributes:
        url: the change-events endpoint (PagerDuty's ``…/v2/change/enqueue``, or any receiver of
            that shape).
        routing_key: the integration's routing key (``payload.routing_key``).
        source: ``payload.source`` (default ``changeguard``).
        link: the Web UI address of a change id, for ``links`` (None: no link).
        timeout: seconds per HTTP request.
    """

    url: str
    routing_key: str
    source: str = "changeguard"
    link: Callable[[str], str] | None = None
    timeout: float = 10.0


class ChangeEventActivities:
    """The change-event activity, bound to the worker's sink (None: events are not sent)."""

    def __init__(
        self, sink: ChangeEventSink | None, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.sink = sink
        self.transport = transport

    @activity.defn(name=SEND_CHANGE_EVENT)
    async def send_change_event(self, event: ChangeEvent) -> SendChangeEventResult:
        """POST one change event; retryable unless the receiver refused it (4xx other than 429).

        Raises:
            ApplicationError: ``TargetUnavailable`` (retryable, jittered) or ``InvalidInput``.
        """
        sink = self.sink
        if sink is None:
            return SendChangeEventResult(sent=False, detail="no change-event sink on this worker")
        link = sink.link(event.change_id) if sink.link else None
        body = payload_of(event, routing_key=sink.routing_key, source=sink.source, link=link)
        what = f"change event {event.change_id}#{event.seq} ({event.event})"
        try:
            async with httpx.AsyncClient(
                timeout=sink.timeout, trust_env=False, transport=self.transport
            ) as client:
                response = await client.post(sink.url, json=body)
        except (httpx.HTTPError, OSError) as exc:
            raise retryable_error(
                f"{what}: POST {sink.url} failed: {type(exc).__name__}: {exc}",
                type=TARGET_UNAVAILABLE,
            ) from exc
        text = " ".join(response.text.split())[:BODY_EXCERPT]
        if response.status_code == 429 or response.status_code >= 500:
            raise retryable_error(
                f"{what}: POST {sink.url} answered {response.status_code}: {text}",
                type=TARGET_UNAVAILABLE,
                details={"status": response.status_code},
            )
        if not response.is_success:
            raise ApplicationError(
                f"{what}: POST {sink.url} was refused with {response.status_code}: {text} "
                "(check CHANGEGUARD_CHANGE_EVENTS_ROUTING_KEY and the URL)",
                {"status": response.status_code},
                type=INVALID_INPUT,
                non_retryable=True,
            )
        log.info(
            "change event sent",
            change_id=event.change_id,
            change_event=event.event,
            seq=event.seq,
            status=response.status_code,
        )
        return SendChangeEventResult(sent=True, status=response.status_code, detail=text)
