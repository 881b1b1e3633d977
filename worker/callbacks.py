"""The worker's callback endpoint: external jobs report progress and completion of handed-off work.

A change kind that hands a target's work to an external system (``activities.kinds.handoff``)
gives it a signed URL ``{base}/callbacks/{ticket}?sig={hmac}`` and completes its activity
asynchronously. The external system posts :class:`~workflows.progress_models.CallbackEvent`
bodies there::

    POST /callbacks/{ticket}?sig=…   {"event": "progress", "details": {...}}  -> heartbeat
                                     {"event": "done", "details": {...}}      -> complete
                                     {"event": "failed", "error": "...",
                                      "retryable": false}                     -> fail
    GET  /healthz                    {"ok": true}

Answers: 200 done; 403 the signature does not match the ticket (per task: the ticket holds the
task token); 410 the attempt is gone (completed, timed out, retried: stop reporting — a retried
attempt posts the job again and hands it a new URL); 422 a body that is not an event; 503 Temporal
is unreachable (report again later).

``done`` goes through the same rules as a mutation that returns
(:meth:`activities.change.ChangeActivities.finish_handoff`): ``NothingApplied`` fails an apply that
changed nothing, and the effect is written to the change ledger under its idempotency key before
the activity completes.

The server listens on loopback (``CHANGEGUARD_CALLBACK_PORT``, default 8765); every worker of a
task queue shares ``CHANGEGUARD_CALLBACK_SECRET``, so a worker restarted on the same port takes
the callbacks of jobs its predecessor started. Run it beside the worker::

    async with serve_callbacks(client, kinds=kinds, ledger=audit.store):
        await worker.run()
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.change import ChangeActivities
from activities.kinds import handoff
from activities.kinds.base import ChangeKind
from guardrails.plugins import PluginRegistry
from workflows.errors import TARGET_REJECTED, TARGET_UNAVAILABLE
from workflows.progress_models import CallbackEvent, HandoffTicket, HeartbeatEnvelope

if TYPE_CHECKING:
    from activities.audit import AuditStore

log = structlog.get_logger(__name__)

PORT_ENV = "CHANGEGUARD_CALLBACK_PORT"
DEFAULT_PORT = 8765


def _json(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"ok": status == 200, "message": message, **extra}, status_code=status)


class CallbackApp:
    """The Starlette app behind the endpoint; see the module docstring.

    Args:
        client: the Temporal client whose ``get_async_activity_handle`` acts on the attempts.
        change: the change activities (kinds and ledger) that finish handed-off mutations.
        secret: the HMAC key of callback URLs.
    """

    def __init__(self, client: Client, change: ChangeActivities, secret: bytes) -> None:
        self.client = client
        self.change = change
        self.secret = secret
        self._last: dict[str, tuple[dict[str, Any], datetime]] = {}  # token -> progress, since
        self.app = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/callbacks/{ticket}", self.callback, methods=["POST"]),
            ]
        )

    async def healthz(self, request: Request) -> Response:
        """Liveness of the endpoint."""
        return JSONResponse({"ok": True})

    async def callback(self, request: Request) -> Response:
        """Verify the signed ticket, then heartbeat, complete or fail its activity attempt."""
        token = request.path_params["ticket"]
        ticket = handoff.verify(token, request.query_params.get("sig", ""), self.secret)
        if ticket is None:
            return _json(403, "the signature does not match this callback URL")
        try:
            event = CallbackEvent.model_validate_json(await request.body())
        except ValidationError as exc:
            return _json(422, f"the body is not a callback event: {exc.errors()[:3]}")
        handle = self.client.get_async_activity_handle(task_token=handoff.task_token(ticket))
        try:
            if event.event == "progress":
                await handle.heartbeat(self._envelope(token, ticket, event.details))
            elif event.event == "failed":
                await handle.fail(_failure(ticket, event))
                self._last.pop(token, None)
            else:
                await self._done(handle, ticket, event)
                self._last.pop(token, None)
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                self._last.pop(token, None)
                return _json(410, f"the activity attempt is gone: {exc.message}")
            return _json(503, f"Temporal did not take the callback: {exc.message}")
        log.info("callback", event=event.event, target=ticket.target_id, key=ticket.idempotency_key)
        return _json(200, f"{event.event} recorded")

    def _envelope(
        self, token: str, ticket: HandoffTicket, details: dict[str, Any]
    ) -> dict[str, Any]:
        now = datetime.now(UTC)
        previous = self._last.get(token)
        changed_at = previous[1] if previous is not None and previous[0] == details else now
        self._last[token] = (details, changed_at)
        return HeartbeatEnvelope(
            kind=ticket.kind,
            target=ticket.target_id,
            stage="handed_off",
            checkpoint=details,
            beat_at=now,
            changed_at=changed_at,
            interval_s=ticket.interval_s,
            stall_after_s=ticket.stall_after_s,
            handed_off=True,
        ).model_dump(mode="json")

    async def _done(self, handle: Any, ticket: HandoffTicket, event: CallbackEvent) -> None:
        kind: ChangeKind[Any] = self.change.kinds.get(ticket.kind)
        try:
            result = kind.handoff_result(ticket.target_id, event.details)
            result = await self.change.finish_handoff(ticket, result)
        except ApplicationError as exc:  # NothingApplied, an unkeepable ledger write
            await handle.fail(exc)
            return
        except (ValidationError, ValueError) as exc:
            await handle.fail(
                ApplicationError(
                    f"{ticket.target_id}: the job's result does not read: {exc}",
                    type=TARGET_REJECTED,
                    non_retryable=True,
                )
            )
            return
        await handle.complete(result)


def _failure(ticket: HandoffTicket, event: CallbackEvent) -> ApplicationError:
    message = f"{ticket.target_id}: the external job failed: {event.error or 'no reason given'}"
    if event.retryable:
        return ApplicationError(message, event.details, type=TARGET_UNAVAILABLE)
    return ApplicationError(message, event.details, type=TARGET_REJECTED, non_retryable=True)


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the worker process owns SIGINT and SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def callback_secret(env: dict[str, str] | None = None) -> bytes:
    """The HMAC key from ``CHANGEGUARD_CALLBACK_SECRET``.

    Raises:
        RuntimeError: it is unset (a per-process random key would strand jobs across restarts).
    """
    secret = (env if env is not None else os.environ).get(handoff.SECRET_ENV, "")
    if not secret:
        raise RuntimeError(
            f"set {handoff.SECRET_ENV} (≥ 16 bytes, the same on every worker of the task queue) "
            "to serve hand-off callbacks"
        )
    return secret.encode()


@contextlib.asynccontextmanager
async def serve_callbacks(
    client: Client,
    *,
    kinds: PluginRegistry[ChangeKind[Any]] | None = None,
    ledger: AuditStore | None = None,
    port: int | None = None,
    secret: bytes | None = None,
    host: str = "127.0.0.1",
    public_url: str | None = None,
) -> AsyncIterator[str]:
    """Serve the callback endpoint on this event loop while the block runs; yields its base URL.

    It also configures the process's hand-off kinds (``activities.kinds.handoff.configure``) to
    hand out URLs of this endpoint.

    Args:
        client: the worker's Temporal client.
        kinds: the worker's change kinds (default: the entry points).
        ledger: the change ledger (the audit store) effects are written to.
        port: the port (default ``CHANGEGUARD_CALLBACK_PORT`` or 8765; 0 picks a free one).
        secret: the HMAC key (default ``CHANGEGUARD_CALLBACK_SECRET``).
        host: the interface (loopback by default: put a proxy in front to expose it).
        public_url: the base URL external systems reach (default ``http://host:port``).
    """
    secret = secret if secret is not None else callback_secret()
    if port is None:
        port = int(os.environ.get(PORT_ENV, DEFAULT_PORT))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    url = public_url or f"http://{host}:{bound}"
    app = CallbackApp(client, ChangeActivities(kinds, ledger=ledger), secret)
    server = _Server(uvicorn.Config(app.app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="callback-server")
    while not server.started and not task.done():  # noqa: ASYNC110  (uvicorn has no event)
        await asyncio.sleep(0.01)
    if task.done():
        sock.close()
        await task  # raises what stopped it
    handoff.configure(url, secret)
    log.info("callback endpoint serving", url=url)
    try:
        yield url
    finally:
        server.should_exit = True
        await task
        sock.close()
