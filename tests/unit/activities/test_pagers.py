"""Pagers: the contract and registry, ``webhook`` against a real local receiver, ``log``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel
from structlog.testing import capture_logs
from temporalio.exceptions import ApplicationError

from activities.pagers import (
    LogPager,
    Pager,
    PagerActivities,
    WebhookPager,
    default_registry,
    new_registry,
)
from guardrails.plugins import RegistrationError
from tests.servers import free_port
from workflows.errors import INVALID_INPUT, TARGET_UNAVAILABLE
from workflows.rollout_models import PageInput, PageResult

PAGE = PageInput(
    pager="webhook",
    change_id="chg-1",
    owner="team-web",
    severity="critical",
    summary="error-rate is degraded after wave 1",
    details={"signal": "error-rate", "state": "degraded", "wave": 1},
    dedup_key="chg-1:bake:1:error-rate",
)


class Receiver:
    """A real HTTP receiver that records each POST and answers ``status`` after ``delay``."""

    def __init__(self) -> None:
        self.status = 202
        self.delay = 0.0
        self.received: list[tuple[str, dict[str, str], Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                owner.received.append((self.path, headers, json.loads(body)))
                threading.Event().wait(owner.delay)
                payload = b'{"error": "receiver broke"}' if owner.status >= 400 else b"{}"
                self.send_response(owner.status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/changeguard"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def activities(url: str, **extra: Any) -> PagerActivities:
    return PagerActivities(pager_params={"webhook": {"url": url, **extra}})


def test_entry_points_register_the_builtins() -> None:
    """The built-in pagers arrive through the changeguard.pagers entry points."""
    registry = default_registry()

    assert registry.names() == ["log", "webhook"]
    assert (registry.cls("log"), registry.cls("webhook")) == (LogPager, WebhookPager)


def test_registration_checks_the_contract() -> None:
    """A pager whose page is not async, or that is not a Pager, is refused with the reason."""

    class SyncPager(Pager[BaseModel]):
        name: ClassVar[str] = "sync-pager"
        params_model: ClassVar[type[BaseModel]] = BaseModel

        def page(self, params: BaseModel, inp: PageInput) -> PageResult:  # type: ignore[override]
            return PageResult(pager=self.name, delivered=True)

    class NotAPager:
        name = "not-a-pager"

    registry = new_registry()
    with pytest.raises(RegistrationError, match="page must be 'async def'"):
        registry.register(SyncPager)
    with pytest.raises(RegistrationError, match=r"must subclass activities\.pagers\.Pager"):
        registry.register(NotAPager)  # type: ignore[arg-type]

    class Impostor(WebhookPager):
        pass

    registry.register(WebhookPager)
    with pytest.raises(RegistrationError, match="'webhook' is already registered"):
        registry.register(Impostor)


async def test_webhook_delivers_json_with_dedup_key(receiver: Receiver) -> None:
    """The receiver gets the page as JSON with its dedup key and headers; 2xx is delivered."""
    pagers = activities(receiver.url, headers={"Authorization": "Bearer t0ken"})

    result = await pagers.page(PAGE)

    assert result == PageResult(
        pager="webhook", delivered=True, detail=f"POST {receiver.url} answered 202"
    )
    [(path, headers, body)] = receiver.received
    assert path == "/hooks/changeguard"
    assert body == {
        "pager": "webhook",
        "change_id": "chg-1",
        "owner": "team-web",
        "severity": "critical",
        "summary": "error-rate is degraded after wave 1",
        "details": {"signal": "error-rate", "state": "degraded", "wave": 1},
        "dedup_key": "chg-1:bake:1:error-rate",
    }
    assert (headers["content-type"], headers["authorization"], headers["idempotency-key"]) == (
        "application/json",
        "Bearer t0ken",
        "chg-1:bake:1:error-rate",
    )


async def test_webhook_500_is_retryable(receiver: Receiver) -> None:
    """A 500 from the receiver raises a retryable TargetUnavailable with a jittered delay."""
    receiver.status = 500

    with pytest.raises(ApplicationError) as caught:
        await activities(receiver.url).page(PAGE)

    error = caught.value
    assert (error.type, error.non_retryable, error.details) == (
        TARGET_UNAVAILABLE,
        False,
        ({"status": 500},),
    )
    assert error.message == (
        f"page chg-1:bake:1:error-rate: POST {receiver.url} answered 500: "
        '{"error": "receiver broke"}'
    )
    assert error.next_retry_delay is not None
    assert timedelta(0) <= error.next_retry_delay <= timedelta(seconds=2)
    assert len(receiver.received) == 1


async def test_webhook_timeout_is_retryable(receiver: Receiver) -> None:
    """A receiver slower than the timeout raises a retryable TargetUnavailable."""
    receiver.delay = 1.0

    with pytest.raises(ApplicationError) as caught:
        await activities(receiver.url, timeout="200ms").page(PAGE)

    assert (caught.value.type, caught.value.non_retryable) == (TARGET_UNAVAILABLE, False)
    assert caught.value.message == (
        f"page chg-1:bake:1:error-rate: POST {receiver.url} timed out (ReadTimeout)"
    )
    assert caught.value.next_retry_delay is not None


async def test_webhook_unreachable_is_retryable() -> None:
    """A receiver that is not listening raises a retryable TargetUnavailable naming the URL."""
    url = f"http://127.0.0.1:{free_port()}/hook"

    with pytest.raises(ApplicationError) as caught:
        await activities(url).page(PAGE)

    assert (caught.value.type, caught.value.non_retryable) == (TARGET_UNAVAILABLE, False)
    assert caught.value.message.startswith(f"page chg-1:bake:1:error-rate: POST {url} failed:")


async def test_log_pager_delivers_a_warning() -> None:
    """The log pager writes one warning line carrying the whole page, and is always delivered."""
    with capture_logs() as logs:
        result = await PagerActivities().page(PAGE.model_copy(update={"pager": "log"}))

    assert result == PageResult(pager="log", delivered=True, detail="logged as a warning")
    assert logs[0] == {
        "event": "page",
        "log_level": "warning",
        "change_id": "chg-1",
        "owner": "team-web",
        "severity": "critical",
        "summary": "error-rate is degraded after wave 1",
        "details": {"signal": "error-rate", "state": "degraded", "wave": 1},
        "dedup_key": "chg-1:bake:1:error-rate",
    }


async def test_unknown_pager_is_not_retried() -> None:
    """Paging through an unregistered pager is a non-retryable InvalidInput naming the known ones."""
    with pytest.raises(ApplicationError) as caught:
        await PagerActivities().page(PAGE.model_copy(update={"pager": "carrier-pigeon"}))

    assert (caught.value.type, caught.value.non_retryable) == (INVALID_INPUT, True)
    assert caught.value.message == (
        "no pager named 'carrier-pigeon' is registered (known: log, webhook)"
    )


async def test_misconfigured_webhook_is_not_retried() -> None:
    """A webhook pager without a url in the worker settings is a non-retryable InvalidInput."""
    with pytest.raises(ApplicationError) as caught:
        await PagerActivities(pager_params={"webhook": {"timeout": "5s"}}).page(PAGE)

    assert (caught.value.type, caught.value.non_retryable) == (INVALID_INPUT, True)
    assert caught.value.message == (
        "the webhook pager is misconfigured in the worker settings: "
        "pagers.webhook.url: Field required"
    )
