"""no-conflicting-changes: finding a real in-flight change through dev-server visibility."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment

from guardrails.base import CheckContext, Services
from guardrails.builtin.conflicting_changes import (
    NoConflictingChanges,
    NoConflictingChangesParams,
    build_queries,
)
from tests import fakes
from tests.fakes import Ledger, RecordingKind
from worker.converter import data_converter
from worker.main import build_worker
from workflows.models import (
    Category,
    ChangeContext,
    ChangeRequest,
    ChangeStatus,
    CheckResult,
    CheckSpec,
    CheckStatus,
    Outcome,
    Phase,
    Target,
)

pytestmark = pytest.mark.integration

NOW = datetime(2026, 6, 11, 8, 0, tzinfo=UTC)
VISIBLE_WITHIN = 15.0
"""Seconds the dev server's (eventually consistent) visibility gets to show the running change."""


@dataclass
class Running:
    """A real GuardedChange baking on the dev server, and the client that sees it."""

    client: Client
    handle: WorkflowHandle[Any, Any]
    change_id: str
    task_queue: str


async def _visible(client: Client, query: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + VISIBLE_WITHIN
    while loop.time() < end:
        if [w async for w in client.list_workflows(query, limit=1)]:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"nothing matched {query!r} within {VISIBLE_WITHIN}s")


@pytest.fixture(scope="module")
async def running(dev_env: WorkflowEnvironment) -> AsyncIterator[Running]:
    """A change on web-01 and web-02 (team payments, prod) that sits in Baking for a minute."""
    RecordingKind.ledger = Ledger()
    queue = f"test-{uuid.uuid4().hex[:10]}"
    change_id = f"busy-{uuid.uuid4().hex[:8]}"
    request = ChangeRequest(
        change_id=change_id,
        kind="recording",
        summary="hold two targets",
        requester="alice",
        team="payments",
        environment="prod",
        targets=[Target(id="web-01"), Target(id="web-02")],
        rollout={"waves": ["100%"], "bake": "60s"},
        policy={"guardrails": [{"use": "always-pass"}]},
    )
    guardrails = fakes.guardrails()
    guardrails.register(NoConflictingChanges)
    worker = build_worker(
        dev_env.client,
        task_queue=queue,
        max_cached_workflows=0,
        guardrails=guardrails,
        kinds=fakes.kinds(),
    )
    async with worker:
        handle = await dev_env.client.start_workflow(
            "GuardedChange", request, id=change_id, task_queue=queue
        )
        await _visible(dev_env.client, f"WorkflowId = '{change_id}' AND ChangePhase = 'Baking'")
        yield Running(dev_env.client, handle, change_id, queue)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        assert isinstance(failure.value.cause, CancelledError)
        status: ChangeStatus = await handle.query("status", result_type=ChangeStatus)
        assert (status.outcome, sorted(status.reverted)) == (
            Outcome.ABORTED,
            ["web-01", "web-02"],
        )


async def _status_in(handle: WorkflowHandle[Any, Any], phase: Phase) -> ChangeStatus:
    loop = asyncio.get_running_loop()
    end = loop.time() + VISIBLE_WITHIN
    while True:
        status: ChangeStatus = await handle.query("status", result_type=ChangeStatus)
        if status.phase is phase or loop.time() > end:
            assert (status.phase, status.message) == (phase, status.message)
            return status
        await asyncio.sleep(0.1)


def make_ctx(
    targets: list[str],
    *,
    client: Client | None,
    change_id: str = "chg-new",
    team: str = "web",
    environment: str = "prod",
) -> CheckContext:
    spec = CheckSpec(
        guardrail="no-conflicting-changes",
        category=Category.IN_FLIGHT,
        owner="release-eng",
        timeout=timedelta(seconds=30),
    )
    change = ChangeContext(
        change_id=change_id,
        kind="http-deploy",
        environment=environment,
        team=team,
        requester="bob",
        targets=[Target(id=t) for t in targets],
    )
    return CheckContext(
        change=change, spec=spec, now=NOW, services=Services(temporal_client=client)
    )


async def run(params: dict[str, Any], ctx: CheckContext) -> CheckResult:
    guardrail = NoConflictingChanges()
    return await guardrail.check(guardrail.parse_params(params), ctx)


async def test_overlapping_change_fails_naming_it(running: Running) -> None:
    """A change sharing web-02 with a baking change fails, naming it, its team and the target."""
    result = await run({}, make_ctx(["web-02", "web-03"], client=running.client))
    cid = running.change_id
    assert (result.status, result.reason, result.remedy, result.owner) == (
        CheckStatus.FAIL,
        f"1 other change is in flight on targets of this change: "
        f"{cid} (team payments, recording, prod, Baking) on web-02",
        f"wait for {cid} (team payments) to finish, or coordinate with team payments, then recheck",
        "release-eng",
    )
    assert result.evidence["conflicting"] == [cid]
    assert result.evidence["changes"][cid]["shared_targets"] == ["web-02"]


async def test_worker_gate_blocks_an_overlapping_change(running: Running) -> None:
    """Through the worker's gate (its own client as a service) an overlapping change is blocked."""
    change_id = f"second-{uuid.uuid4().hex[:8]}"
    request = ChangeRequest(
        change_id=change_id,
        kind="recording",
        summary="touch web-02 too",
        requester="bob",
        team="search",
        environment="prod",
        targets=[Target(id="web-02")],
        policy={"guardrails": [{"use": "no-conflicting-changes"}]},
    )
    handle = await running.client.start_workflow(
        "GuardedChange", request, id=change_id, task_queue=running.task_queue
    )
    try:
        status = await _status_in(handle, Phase.BLOCKED)
        assert status.report is not None
        (check,) = status.report.failures
        assert (check.guardrail, check.status, check.evidence["conflicting"]) == (
            "no-conflicting-changes",
            CheckStatus.FAIL,
            [running.change_id],
        )
        assert status.applied == []
    finally:
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()


async def test_disjoint_targets_pass(running: Running) -> None:
    """A change on other targets passes."""
    result = await run({}, make_ctx(["web-03", "web-04"], client=running.client))
    assert (result.status, result.reason, result.evidence["conflicting"]) == (
        CheckStatus.PASS,
        "no other change is in flight (Gating, Executing, Baking, Paused, RollingBack) "
        "on targets of this change",
        [],
    )


async def test_the_change_itself_is_excluded(running: Running) -> None:
    """The running change's own gate (same change id, same targets) does not conflict with itself."""
    ctx = make_ctx(["web-01", "web-02"], client=running.client, change_id=running.change_id)
    result = await run({}, ctx)
    assert result.status is CheckStatus.PASS


async def test_conflict_on_team(running: Running) -> None:
    """With conflict_on=team the same team conflicts on disjoint targets; another team does not."""
    params = {"conflict_on": "team"}
    same = await run(params, make_ctx(["db-01"], client=running.client, team="payments"))
    other = await run(params, make_ctx(["web-01"], client=running.client, team="search"))
    assert (same.status, other.status) == (CheckStatus.FAIL, CheckStatus.PASS)
    assert same.reason == (
        f"1 other change is in flight of team payments: "
        f"{running.change_id} (team payments, recording, prod, Baking)"
    )


async def test_conflict_on_environment(running: Running) -> None:
    """With conflict_on=environment any prod change conflicts; a staging change does not."""
    params = {"conflict_on": "environment"}
    prod = await run(params, make_ctx(["db-01"], client=running.client))
    staging = await run(params, make_ctx(["db-01"], client=running.client, environment="staging"))
    assert (prod.status, staging.status) == (CheckStatus.FAIL, CheckStatus.PASS)
    assert prod.evidence["conflicting"] == [running.change_id]


async def test_phases_outside_in_flight_phases_do_not_conflict(running: Running) -> None:
    """Counting only Executing changes, the baking one is not a conflict."""
    ctx = make_ctx(["web-01"], client=running.client)
    result = await run({"in_flight_phases": ["Executing"]}, ctx)
    assert result.status is CheckStatus.PASS


async def test_visibility_rpc_error_is_an_error(dev_env: WorkflowEnvironment) -> None:
    """A visibility call that fails (unknown namespace) makes the check error, fail-closed."""
    client = await Client.connect(
        dev_env.client.service_client.config.target_host,
        namespace=f"missing-{uuid.uuid4().hex[:6]}",
        data_converter=data_converter,
    )
    result = await run({}, make_ctx(["web-01"], client=client))
    assert result.status is CheckStatus.ERROR
    assert result.reason.startswith(
        "no-conflicting-changes could not list running changes: visibility query failed ("
    )
    assert all((result.reason, result.remedy, result.owner))


async def test_missing_client_is_an_error() -> None:
    """Without a Temporal client in services the check errors and says how to provide one."""
    result = await run({}, make_ctx(["web-01"], client=None))
    assert (result.status, result.reason) == (
        CheckStatus.ERROR,
        "no-conflicting-changes cannot look for other changes: the worker provides no "
        "'temporal_client' service",
    )
    assert result.remedy


def test_queries_quote_values_and_drop_unmatchable_ones() -> None:
    """Quotes inside values are doubled; values the server cannot match are left to the client."""
    params = NoConflictingChangesParams(conflict_on="team")
    base = (
        "WorkflowType = 'GuardedChange' AND ExecutionStatus = 'Running' AND ChangePhase IN "
        "('Gating', 'Executing', 'Baking', 'Paused', 'RollingBack') AND ChangeId != 'chg-new'"
    )
    quoted = build_queries(params, make_ctx(["a"], client=None, team="o'brien"))
    backslash = build_queries(params, make_ctx(["a"], client=None, team="ops\\eu"))
    targets = build_queries(NoConflictingChangesParams(), make_ctx(["b", "a"], client=None))
    assert (quoted, backslash, targets) == (
        [f"{base} AND ChangeTeam = 'o''brien'"],
        [base],
        [f"{base} AND ChangeTargets IN ('a', 'b')"],
    )
