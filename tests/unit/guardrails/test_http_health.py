"""The http-health guardrail against a real HTTP server on the loopback interface."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from guardrails.base import CheckContext, new_registry, params_errors
from guardrails.builtin.http_health import HttpHealth, HttpHealthParams
from workflows.models import Category, ChangeContext, CheckResult, CheckSpec, CheckStatus

ROUTES: dict[str, tuple[int, bytes]] = {
    "/ok": (200, b"ok"),
    "/down": (503, b"maintenance: database   failover\nin progress " + b"x" * 300),
    "/empty": (204, b""),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(1.0)
            status, body = 200, b"late"
        else:
            status, body = ROUTES.get(self.path, (404, b"not found"))
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 204:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/health"


def make_ctx() -> CheckContext:
    spec = CheckSpec(
        guardrail="http-health",
        category=Category.HEALTH,
        owner="service-owners",
        timeout=timedelta(seconds=15),
    )
    change = ChangeContext(change_id="chg-1", kind="http-deploy", environment="prod")
    return CheckContext(change=change, spec=spec, now=datetime(2026, 6, 1, tzinfo=UTC))


async def run(params: dict[str, Any]) -> CheckResult:
    guardrail = HttpHealth()
    return await guardrail.check(guardrail.parse_params(params), make_ctx())


async def test_200_passes(base_url: str) -> None:
    """An endpoint answering 200 passes, with the status and latency as evidence."""
    result = await run({"url": f"{base_url}/ok"})
    assert result.status is CheckStatus.PASS
    assert result.reason == f"GET {base_url}/ok answered 200"
    assert result.evidence["status"] == 200
    assert isinstance(result.evidence["latency_ms"], int)


async def test_503_fails_with_status_and_body(base_url: str) -> None:
    """A 503 fails, naming both statuses, and the remedy quotes the start of the body."""
    url = f"{base_url}/down"
    result = await run({"url": url})
    body = ("maintenance: database failover in progress " + "x" * 300)[:200] + "…"
    assert (result.status, result.reason, result.remedy, result.owner) == (
        CheckStatus.FAIL,
        f"GET {url} answered 503, expected 200",
        f"restore {url} so that it answers 200 (body: {body})",
        "service-owners",
    )
    assert result.evidence["status"] == 503


async def test_closed_port_fails_without_raising(closed_port_url: str) -> None:
    """A refused connection is a failure naming the exception, not an exception."""
    result = await run({"url": closed_port_url})
    assert result.status is CheckStatus.FAIL
    assert result.reason.startswith(f"GET {closed_port_url} failed: ConnectError")
    assert result.remedy == f"make {closed_port_url} reachable from the worker and answering 200"
    assert result.evidence["error"] == "ConnectError"


async def test_timeout_fails_without_raising(base_url: str) -> None:
    """An endpoint slower than the params' timeout fails with a timeout error."""
    result = await run({"url": f"{base_url}/slow", "timeout": 0.2})
    assert result.status is CheckStatus.FAIL
    assert result.reason.startswith(f"GET {base_url}/slow failed: ReadTimeout")


async def test_expect_status_is_honoured(base_url: str) -> None:
    """expect_status=204 passes on 204 and fails on 200."""
    assert (await run({"url": f"{base_url}/empty", "expect_status": 204})).status is (
        CheckStatus.PASS
    )
    wrong = await run({"url": f"{base_url}/ok", "expect_status": 204})
    assert wrong.reason == f"GET {base_url}/ok answered 200, expected 204"


def test_bad_params_are_reported() -> None:
    """A non-http URL, an impossible status and a zero timeout are each reported."""
    assert params_errors(HttpHealth(), {"url": "ftp://x/", "expect_status": 42, "timeout": 0}) == [
        "params.url: 'ftp://x/' is not an http(s) URL; write e.g. 'http://service:8080/healthz'",
        "params.expect_status: Input should be greater than or equal to 100",
        "params.timeout: the timeout must be positive, e.g. '5s'",
    ]


def test_registers_against_the_contract() -> None:
    """HttpHealth meets the guardrail contract with its documented defaults."""
    registry = new_registry()
    registry.register(HttpHealth)
    guardrail = registry.get("http-health")
    assert (
        guardrail.category,
        guardrail.default_owner,
        guardrail.default_timeout,
        guardrail.params_model,
    ) == (Category.HEALTH, "service-owners", timedelta(seconds=15), HttpHealthParams)
