"""Temporal environments for the suite; nothing here downloads anything.

``--workflow-environment`` picks the server, as in temporalio/samples-python:
``time-skipping`` (default for unit tests), ``local`` (dev server), or ``host:port`` of a running
server. Unit tests use the ``env`` fixture (time-skipping unless told otherwise); integration tests
use ``dev_env`` (the dev server, or the given ``host:port``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from google.protobuf.empty_pb2 import Empty
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities, SqliteAuditStore
from demo.fleet import FleetServer
from tests.helpers import start_dev_server, start_time_skipping
from worker.converter import data_converter

_configure = structlog.configure


def _configure_uncached(*args: Any, **kwargs: Any) -> None:
    """``structlog.configure`` as the code calls it, but never caching loggers under the suite.

    ``worker.logging`` caches each logger on first use (fast in production). A cached logger keeps
    the processors of that moment, so a module whose logger was first used inside one test's
    ``capture_logs`` logged into that dead capture for the rest of the session, and a later
    ``capture_logs`` saw nothing once ``configure`` had run again (test_resilience failed by test
    order).
    """
    kwargs["cache_logger_on_first_use"] = False
    _configure(*args, **kwargs)


structlog.configure = _configure_uncached


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without interpreter finalisation, where the SDK's native runtime can crash.

    Every report is written by now; only the process teardown is skipped (see ``cli.main.entry``).
    """
    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])


def pytest_configure(config: pytest.Config) -> None:
    """Workers audit into a session-private store and hold the suite's default bundle.

    The default bundle is :data:`tests.helpers.OPEN_BUNDLE`, unless a test passes its own.

    Workers fail closed without a bundle; most tests judge a change by the rules its request
    adds, so the suite's default is explicit: no platform rules, ``unmatched: allow``. It reaches
    workers built from ``Settings.from_env()`` through ``CHANGEGUARD_POLICY`` (CLI processes
    inherit it), and workers built from settings without a policy (``Settings.from_env(env={})``)
    through :func:`worker.main.load_holder`, which the suite wraps.
    """
    import tempfile

    import yaml

    import worker.main
    from guardrails.bundle import BundleHolder
    from tests.helpers import OPEN_BUNDLE

    state = Path(tempfile.mkdtemp(prefix="changeguard-tests-"))
    os.environ.setdefault("CHANGEGUARD_AUDIT_URL", f"sqlite:///{state / 'audit.db'}")
    os.environ.setdefault("CHANGEGUARD_DIRECTORY", f"yaml:{state / 'operators.yaml'}")
    (state / "operators.yaml").write_text("operators: {}\n")
    (state / "policy.yaml").write_text(yaml.safe_dump(OPEN_BUNDLE))
    os.environ.setdefault("CHANGEGUARD_POLICY", str(state / "policy.yaml"))

    strict = worker.main.load_holder

    def load_holder(settings: Any, guardrails: Any) -> BundleHolder:
        if settings.policy is None:
            return BundleHolder.fixed(OPEN_BUNDLE)
        return strict(settings, guardrails)

    worker.main.load_holder = load_holder  # type: ignore[assignment]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--workflow-environment",
        default="time-skipping",
        help="time-skipping (default), local (dev server) or host:port of a running server",
    )


async def _external(target: str) -> WorkflowEnvironment:
    client = await Client.connect(target, data_converter=data_converter)
    return WorkflowEnvironment.from_client(client)


async def _local() -> WorkflowEnvironment:
    return await start_dev_server()  # as `changeguard dev` starts it (eager dispatch of checks)


@pytest.fixture(scope="session")
async def env(request: pytest.FixtureRequest) -> AsyncIterator[WorkflowEnvironment]:
    """The environment unit tests run in (time-skipping by default)."""
    choice = request.config.getoption("--workflow-environment")
    if choice == "time-skipping":
        environment = await start_time_skipping()
    elif choice == "local":
        environment = await _local()
    else:
        environment = await _external(choice)
    _session_env.append(environment)
    yield environment
    await environment.shutdown()


_session_env: list[WorkflowEnvironment] = []
"""The session's ``env``, once started (modules may override ``env`` with a server of their own)."""
_stalled_by: list[str] = []
"""The test after which the session's time-skipping server stopped skipping time (or died)."""

PROBE_SKIP = timedelta(seconds=30)
"""How far the health probe moves the virtual clock: short of any timer a test leaves behind."""
PROBE_WITHIN = 15.0
"""Real seconds one look may take. A stalled server does not skip at all (its 30 s virtual sleep
takes 30 s of real time); a healthy one skips in milliseconds when idle, but steps through every
timer a module still has (1 s lock leases in test_target_lock_queue), a workflow task each, which
took over 10 s on a loaded machine and failed healthy teardowns (CI rehearsal, 13 errors)."""
PROBE_LOOKS = 2
"""Looks before the server counts as stalled: one slow look may be a backlog, two are not."""


async def _time_skips(environment: WorkflowEnvironment) -> str | None:
    """``None`` when ``environment``'s server answers and skips time; otherwise what is wrong."""
    try:
        await environment.client.test_service.get_current_time(
            Empty(), timeout=timedelta(seconds=PROBE_WITHIN)
        )
    except RPCError as exc:
        return f"the time-skipping test server does not answer ({exc.message}): it is gone"
    for _ in range(PROBE_LOOKS):
        try:
            await asyncio.wait_for(environment.sleep(PROBE_SKIP), PROBE_WITHIN)
        except TimeoutError:
            continue  # a backlog of timer steps may have drained by the next look
        return None
    return (
        f"the time-skipping test server no longer skips time ({PROBE_LOOKS} virtual sleeps of "
        f"{PROBE_SKIP.seconds}s each took over {PROBE_WITHIN:g}s): something holds its time lock, "
        "e.g. an activity still running for a workflow that already closed, or a task in a queue "
        "no worker polls"
    )


@pytest.fixture(autouse=True)
async def _time_skipping_healthy(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """A test on the time-skipping server finds it healthy, and leaves it so.

    The server is shared by the session: a test that leaves it unable to skip time (see
    :func:`_time_skips`) would make every later test that waits on a timer hang until its
    timeout, far from the cause. So the culprit fails at its own teardown, naming the cause, and
    every later test on that server fails at once, naming the culprit.

    Only the session's shared server is probed. A module that starts its own (test_target_lock_queue)
    loses it with the module, and its tests assert their own outcomes; probing it failed teardowns of
    passing tests there (the lock lab terminates locks that may have a `holder_alive` in flight, and
    the Java test server then keeps its time lock), and cost 30 s a test.
    """
    if "env" not in request.fixturenames:
        yield
        return
    environment = request.getfixturevalue("env")  # or a parameter of that name
    if not isinstance(environment, WorkflowEnvironment) or not environment.supports_time_skipping:
        yield
        return
    if environment not in _session_env:
        yield
        return
    if _stalled_by:
        pytest.fail(f"the session's time-skipping server is unusable since {_stalled_by[0]}")
    yield
    problem = await _time_skips(environment)
    if problem is not None:
        _stalled_by.append(f"{request.node.nodeid}: {problem}")
        pytest.fail(f"after this test, {problem}")


@pytest.fixture(scope="session")
async def dev_env(request: pytest.FixtureRequest) -> AsyncIterator[WorkflowEnvironment]:
    """A real dev server (or the ``host:port`` given) for integration tests."""
    choice = request.config.getoption("--workflow-environment")
    environment = await (_local() if choice in ("time-skipping", "local") else _external(choice))
    yield environment
    await environment.shutdown()


@pytest.fixture
def task_queue() -> str:
    """A task queue of the test's own, so workers of different tests never share work."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def operators() -> str:
    """The operator directory (YAML) the ``audit`` fixture's worker reads; modules override it."""
    return "operators: {}\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteAuditStore]:
    """A fresh SQLite audit store for one test."""
    s = SqliteAuditStore(tmp_path / "audit.db")
    yield s
    s.close()


@pytest.fixture
def audit(tmp_path: Path, store: SqliteAuditStore, operators: str) -> AuditActivities:
    """The audit activities over ``store``, reading ``operators`` as the operator directory."""
    (tmp_path / "operators.yaml").write_text(operators)
    return AuditActivities(store, f"yaml:{tmp_path / 'operators.yaml'}")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetServer]:
    """The demo fleet service over real HTTP on a free loopback port, with a fresh database."""
    with FleetServer(tmp_path / "fleet.db") as server:
        yield server


@pytest.fixture
async def fleet_client(fleet: FleetServer) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of ``fleet`` (its ``url`` as base; no proxy from the environment)."""
    async with httpx.AsyncClient(base_url=fleet.url, trust_env=False, timeout=10) as client:
        yield client


@pytest.fixture
def repo_root() -> Iterator[Path]:
    yield Path(__file__).resolve().parent.parent
