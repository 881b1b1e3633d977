"""Hand a target's work to an external system and complete the activity asynchronously.

A kind calls :func:`callback_url` for the running attempt, gives that URL to the external system
(with the step's idempotency key), and raises :func:`complete_async`: the activity's thread of
work ends, the worker slot is freed, and the attempt stays open on the server. The external system
then posts :class:`~workflows.progress_models.CallbackEvent` bodies to the URL: ``progress``
heartbeats the attempt (so the heartbeat timeout measures the job, not a worker thread), ``done``
completes it and ``failed`` fails it. The worker's callback endpoint (``worker.callbacks``) checks
the signature, then acts through ``Client.get_async_activity_handle(task_token=...)``.

The URL carries a :class:`~workflows.progress_models.HandoffTicket` (the task token and the context
needed to record the effect in the change ledger) as base64url JSON, and an HMAC-SHA256 of it under
the worker fleet's callback secret: per task, because the ticket holds the task token. Any worker
with the same secret and port can take the callback, so a job outlives the worker that started it.

A lost callback is caught by the heartbeat timeout: the server retries the attempt, the kind calls
the external system again with the same idempotency key, and the system answers with the job it
already runs (now reporting to the new attempt's URL) or the result of the one it finished.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import NoReturn

from temporalio import activity

from workflows.models import ApplyInput
from workflows.progress_models import HandoffTicket, MutationOptions

URL_ENV = "CHANGEGUARD_CALLBACK_URL"
"""The base URL external systems reach the worker's callback endpoint at."""
SECRET_ENV = "CHANGEGUARD_CALLBACK_SECRET"
"""The HMAC key of callback URLs, shared by the workers of one task queue."""


@dataclass(frozen=True)
class CallbackConfig:
    """Where callbacks go and how they are signed."""

    base_url: str
    secret: bytes


_config: CallbackConfig | None = None


def configure(base_url: str, secret: bytes | str) -> None:
    """Set the process's callback endpoint (the callback server does this when it starts)."""
    global _config
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < 16:
        raise ValueError("the callback secret must be at least 16 bytes")
    _config = CallbackConfig(base_url.rstrip("/"), key)


def config() -> CallbackConfig:
    """The process's callback endpoint, else the one the environment names.

    Raises:
        RuntimeError: none is configured (the worker serves no callback endpoint).
    """
    if _config is not None:
        return _config
    url, secret = os.environ.get(URL_ENV, ""), os.environ.get(SECRET_ENV, "")
    if not url or not secret:
        raise RuntimeError(
            f"no callback endpoint: run the worker with its callback server ({URL_ENV}, "
            f"{SECRET_ENV}), or hand-off kinds cannot run"
        )
    configure(url, secret)
    assert _config is not None
    return _config


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(token: str, secret: bytes) -> str:
    """The HMAC-SHA256 of an encoded ticket, hex."""
    return hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()


def encode_ticket(ticket: HandoffTicket) -> str:
    """A ticket as it travels in a URL."""
    return _b64(ticket.model_dump_json().encode())


def verify(token: str, signature: str, secret: bytes) -> HandoffTicket | None:
    """The ticket if ``signature`` is its HMAC under ``secret``, else None (constant-time)."""
    if not hmac.compare_digest(sign(token, secret), signature):
        return None
    try:
        return HandoffTicket.model_validate_json(_unb64(token))
    except ValueError:
        return None


def task_token(ticket: HandoffTicket) -> bytes:
    """The activity task token a ticket carries."""
    return _unb64(ticket.task_token)


def ticket_for(inp: ApplyInput, *, options: MutationOptions | None = None) -> HandoffTicket:
    """The ticket of the running activity attempt that works on ``inp``."""
    info = activity.info()
    options = options or MutationOptions()
    return HandoffTicket(
        task_token=_b64(info.task_token),
        change_id=inp.change_id,
        run_id=info.workflow_run_id or "",
        kind=inp.kind,
        step=inp.step,
        target_id=inp.target.id,
        idempotency_key=inp.idempotency_key,
        applied_key=inp.applied_key,
        activity=info.activity_type,
        interval_s=options.heartbeat_interval.total_seconds(),
        stall_after_s=None if options.stall_after is None else options.stall_after.total_seconds(),
    )


def callback_url(inp: ApplyInput, *, options: MutationOptions | None = None) -> str:
    """The signed URL an external system reports this attempt's progress and end to."""
    cfg = config()
    token = encode_ticket(ticket_for(inp, options=options))
    return f"{cfg.base_url}/callbacks/{token}?sig={sign(token, cfg.secret)}"


def complete_async() -> NoReturn:
    """End the attempt's work here; the callback will complete it (``raise_complete_async``)."""
    activity.raise_complete_async()
