"""``pg-migrate`` against a real PostgreSQL cluster, and the irreversible-steps gate around it.

One cluster serves the module (``tests.servers.PostgresServer``); every test gets a database of its
own. The kind is called directly for its exactly-once and revert rules, and through a worker on the
dev server for the gate: a change with an irreversible step is blocked until the platform's
approvers approve it, then it runs; with no platform rule for it the gate builds the check in,
forbidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities
from activities.kinds.base import new_registry
from activities.kinds.pg_migrate import IRREVERSIBLE_STEP, PgMigrate, PgMigrateParams
from guardrails.base import default_registry
from guardrails.builtin.irreversible import IrreversibleSteps
from guardrails.bundle import BundleHolder, bundle_from_mapping
from tests.helpers import until_phase
from tests.servers import PostgresServer
from worker.main import build_worker
from workflows.errors import REFUSED, TARGET_REJECTED
from workflows.models import (
    Approval,
    ApprovalResult,
    ChangeResult,
    ChangeStatus,
    Outcome,
    Phase,
    Target,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

DB = Target(id="orders")
KEY, REVERT = "chg:apply:orders", "chg:revert:orders"
STEPS: list[dict[str, Any]] = [
    {
        "name": "add-total",
        "up": "ALTER TABLE orders ADD total bigint",
        "down": "ALTER TABLE orders DROP total",
    },
    {
        "name": "fill-total",
        "backfill": {"table": "orders", "key": "id", "set": "total = price * qty", "batch": 100},
        "down": "UPDATE orders SET total = NULL",
    },
    {"name": "drop-legacy", "up": "ALTER TABLE orders DROP COLUMN legacy", "reversible": False},
]


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    """A database of this test's own with an ``orders`` table of 1,000 rows."""
    url = postgres.create_database(f"m_{uuid.uuid4().hex[:10]}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY, price int NOT NULL, qty int NOT NULL, "
            "legacy text)"
        )
        conn.execute(
            "INSERT INTO orders (id, price, qty) SELECT g, g, 2 FROM generate_series(1, 1000) g"
        )
    return url


def params(steps: list[dict[str, Any]] = STEPS) -> PgMigrateParams:
    return PgMigrateParams.model_validate({"steps": steps})


def columns(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'orders' "
            "ORDER BY ordinal_position"
        ).fetchall()
    return [r[0] for r in rows]


async def test_every_step_applies_once_per_idempotency_key(dsn: str) -> None:
    """A second apply with the same key runs nothing and reports the earlier attempt's effect."""
    kind = PgMigrate({"orders": dsn})
    first = await kind.apply(params(), DB, idempotency_key=KEY)
    again = await kind.apply(params(), DB, idempotency_key=KEY)
    assert (first.applied, first.replayed, first.irreversible) == (True, False, ["drop-legacy"])
    assert [(s["name"], s["state"]) for s in again.steps] == [
        ("add-total", "already"),
        ("fill-total", "already"),
        ("drop-legacy", "already"),
    ]
    assert (again.applied, again.replayed) == (False, True)
    assert columns(dsn) == ["id", "price", "qty", "total"]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE total = price * qty").fetchone() == (
            1000,
        )


async def test_an_interrupted_backfill_resumes_from_its_committed_key(dsn: str) -> None:
    """Cancelled mid-backfill, the next attempt continues after the last committed batch."""
    kind = PgMigrate({"orders": dsn})
    steps = [
        {
            "name": "fill",
            "backfill": {
                "table": "orders",
                "key": "id",
                # pg_sleep per batch (in the WHERE of one row) slows batches enough to interrupt
                "set": "qty = qty + 1",
                "where": "id > 0 AND (id % 100 <> 1 OR pg_sleep(0.05) IS NOT NULL)",
                "batch": 100,
            },
            "down": "UPDATE orders SET qty = qty - 1",
        }
    ]
    task = asyncio.ensure_future(kind.apply(params(steps), DB, idempotency_key=KEY))
    await asyncio.sleep(0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    with psycopg.connect(dsn) as conn:
        done = conn.execute("SELECT count(*) FROM orders WHERE qty = 3").fetchone()
    assert done is not None and 0 < done[0] < 1000
    result = await kind.apply(params(steps), DB, idempotency_key=KEY)
    with psycopg.connect(dsn) as conn:
        per_qty = conn.execute("SELECT qty, count(*) FROM orders GROUP BY qty").fetchall()
        recorded = conn.execute("SELECT state, rows FROM changeguard_migrations").fetchall()
    assert per_qty == [(3, 1000)], "every row exactly once"
    assert recorded == [("done", 1000)]
    assert result.applied


async def test_revert_undoes_reversible_steps_in_reverse_and_stops_at_an_irreversible_one(
    dsn: str,
) -> None:
    """Reversible steps are undone newest first; an applied irreversible one stops the revert."""
    kind = PgMigrate({"orders": dsn})
    reversible = STEPS[:2]
    await kind.apply(params(reversible), DB, idempotency_key=KEY)
    undone = await kind.revert_if_applied(
        params(reversible), DB, applied_key=KEY, idempotency_key=REVERT
    )
    assert [(s["name"], s["state"]) for s in undone.steps] == [
        ("fill-total", "reverted"),
        ("add-total", "reverted"),
    ]
    assert columns(dsn) == ["id", "price", "qty", "legacy"]
    again = await kind.revert_if_applied(
        params(reversible), DB, applied_key=KEY, idempotency_key=REVERT
    )
    assert (again.applied, again.replayed) == (False, True)

    key2, revert2 = "chg2:apply:orders", "chg2:revert:orders"
    await kind.apply(params(), DB, idempotency_key=key2)
    with pytest.raises(ApplicationError) as caught:
        await kind.revert_if_applied(params(), DB, applied_key=key2, idempotency_key=revert2)
    assert (caught.value.type, caught.value.non_retryable) == (IRREVERSIBLE_STEP, True)
    assert caught.value.details[0]["blocked_at"] == "drop-legacy"
    assert columns(dsn) == ["id", "price", "qty", "total"], "nothing pretends to undo it"


async def test_nothing_to_revert_and_unknown_targets(dsn: str) -> None:
    """A key that ran nothing reverts nothing; a target without a DSN is rejected."""
    kind = PgMigrate({"orders": dsn})
    nothing = await kind.revert_if_applied(params(), DB, applied_key=KEY, idempotency_key=REVERT)
    assert (nothing.applied, nothing.replayed) == (False, False)
    with pytest.raises(ApplicationError) as caught:
        await kind.apply(params(), Target(id="billing"), idempotency_key=KEY)
    assert caught.value.type == TARGET_REJECTED
    assert "billing" in caught.value.message and dsn not in caught.value.message


async def test_sql_the_database_refuses_is_rejected_with_the_steps_done(dsn: str) -> None:
    """A failing step is TargetRejected, its details name the steps done before it."""
    kind = PgMigrate({"orders": dsn})
    broken = [STEPS[0], {"name": "typo", "up": "ALTER TABLE nope ADD x int"}]
    with pytest.raises(ApplicationError) as caught:
        await kind.apply(params(broken), DB, idempotency_key=KEY)
    assert caught.value.type == TARGET_REJECTED
    assert [s["name"] for s in caught.value.details[0]["steps"]] == ["add-total"]


# ---------------------------------------------------------------------- the gate


def platform(approvable: bool) -> dict[str, Any]:
    rule: dict[str, Any] = {"use": "irreversible-steps", "owner": "dba"}
    if approvable:
        rule.update(
            opt_out={"approvers": ["dba-leads"], "max_duration": "1h"},
            reason="schema changes that drop data are signed off by a DBA lead",
        )
    return {"unmatched": "allow", "guardrails": [rule]}


@pytest.fixture
def operators() -> str:
    return "operators:\n  dora: [dba-leads]\n"


@contextlib.asynccontextmanager
async def worker(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    audit: AuditActivities,
    dsn: str,
    bundle: dict[str, Any],
) -> AsyncIterator[None]:
    guardrails = default_registry()
    if "irreversible-steps" not in guardrails:
        guardrails.register(IrreversibleSteps)
    kinds = new_registry()

    class Orders(PgMigrate):
        def __init__(self) -> None:
            super().__init__({"orders": dsn})

    Orders.__qualname__ = "Orders"
    kinds.register(Orders)
    async with build_worker(
        dev_env.client,
        task_queue=task_queue,
        bundle=BundleHolder.fixed(bundle_from_mapping(bundle, registry=guardrails)),
        guardrails=guardrails,
        kinds=kinds,
        audit=audit,
        max_cached_workflows=0,
    ):
        yield


def request(change_id: str, steps: list[dict[str, Any]] = STEPS) -> dict[str, Any]:
    return {
        "change_id": change_id,
        "kind": "pg-migrate",
        "summary": "add orders.total, drop orders.legacy",
        "requester": "alice",
        "team": "data",
        "environment": "prod",
        "targets": [{"id": "orders"}],
        "params": {"steps": steps},
        "rollout": {"waves": ["100%"], "max_parallel": 1},
    }


async def test_an_irreversible_step_is_blocked_without_approval_and_runs_once_approved(
    dev_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, dsn: str
) -> None:
    """Blocked naming the step; a DBA lead's approval lets the change run to completion."""
    async with worker(dev_env, task_queue, audit, dsn, platform(approvable=True)):
        change_id = f"mig-{uuid.uuid4().hex[:8]}"
        handle = await dev_env.client.start_workflow(
            "GuardedChange",
            request(change_id),
            id=change_id,
            task_queue=task_queue,
            result_type=ChangeResult,
        )
        status = await until_phase(handle, Phase.AWAITING_APPROVAL)
        assert status.report is not None
        (check,) = [c for c in status.report.checks if c.rule == "irreversible-steps"]
        assert (check.status.value, check.evidence["irreversible"]) == ("fail", ["drop-legacy"])
        assert columns(dsn) == ["id", "price", "qty", "legacy"], "nothing ran before approval"
        answer = await handle.execute_update(
            "approve",
            Approval(
                guardrails=["irreversible-steps"],
                approver="dora",
                reason="legacy is unused since 2024; backup taken",
                report_hash=status.report.report_hash,
            ),
            result_type=ApprovalResult,
        )
        assert answer.accepted == ["irreversible-steps"]
        result = await handle.result()
    assert (result.outcome, result.applied) == (Outcome.COMPLETED, ["orders"])
    assert columns(dsn) == ["id", "price", "qty", "total"]


@pytest.mark.parametrize(
    "bundle",
    [
        pytest.param({"unmatched": "allow"}, id="bundle-lists-nothing"),
        pytest.param(platform(approvable=False), id="bundle-lists-it-forbidden"),
    ],
)
async def test_without_a_platform_approval_rule_it_cannot_be_approved(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    audit: AuditActivities,
    dsn: str,
    bundle: dict[str, Any],
) -> None:
    """Forbidden by default, built into the gate: Blocked naming the step; approval refused."""
    async with worker(dev_env, task_queue, audit, dsn, bundle):
        change_id = f"mig-{uuid.uuid4().hex[:8]}"
        handle = await dev_env.client.start_workflow(
            "GuardedChange",
            request(change_id),
            id=change_id,
            task_queue=task_queue,
            result_type=ChangeResult,
        )
        status: ChangeStatus = await until_phase(handle, Phase.BLOCKED)
        assert status.report is not None
        (check,) = [c for c in status.report.checks if c.rule == "irreversible-steps"]
        assert (check.status.value, check.opt_out.value, check.source) == (
            "fail",
            "forbidden",
            "platform",
        )
        assert check.evidence["irreversible"] == ["drop-legacy"]
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                "approve",
                Approval(
                    guardrails=["irreversible-steps"],
                    approver="dora",
                    reason="please",
                    report_hash=status.report.report_hash,
                ),
                result_type=ApprovalResult,
            )
        cause = refused.value.cause
        assert isinstance(cause, ApplicationError) and cause.type == REFUSED
        await handle.cancel()
    assert columns(dsn) == ["id", "price", "qty", "legacy"]


async def approved(
    dev_env: WorkflowEnvironment, task_queue: str, steps: list[dict[str, Any]]
) -> WorkflowHandle[Any, ChangeResult]:
    """A change of these steps, started, and approved by a DBA lead once the gate blocks it."""
    change_id = f"mig-{uuid.uuid4().hex[:8]}"
    handle = await dev_env.client.start_workflow(
        "GuardedChange",
        request(change_id, steps),
        id=change_id,
        task_queue=task_queue,
        result_type=ChangeResult,
    )
    status = await until_phase(handle, Phase.AWAITING_APPROVAL)
    assert status.report is not None
    await handle.execute_update(
        "approve",
        Approval(
            guardrails=["irreversible-steps"],
            approver="dora",
            reason="backup taken",
            report_hash=status.report.report_hash,
        ),
        result_type=ApprovalResult,
    )
    return handle


TYPO = {"name": "typo", "up": "ALTER TABLE nope ADD x int"}


async def test_a_failure_after_the_irreversible_step_pauses_and_pages_instead_of_reverting(
    dev_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, dsn: str
) -> None:
    """drop-legacy ran, then a step fails: Paused and paged; abort ends failed, nothing undone."""
    steps = [STEPS[0], STEPS[2], TYPO]
    async with worker(dev_env, task_queue, audit, dsn, platform(approvable=True)):
        handle = await approved(dev_env, task_queue, steps)
        paused = await until_phase(handle, Phase.PAUSED)
        assert "past the point of no return" in paused.message
        assert "orders (drop-legacy)" in paused.message
        assert [p for p in paused.pages if "point of no return" in p and "drop-legacy" in p]
        assert columns(dsn) == ["id", "price", "qty", "total"], "nothing reverted"
        await handle.execute_update("abort", {"operator": "dora", "reason": "repair by hand"})
        result = await handle.result()
    assert (result.outcome, result.needs_repair, result.reverted) == (
        Outcome.FAILED,
        ["orders (drop-legacy)"],
        [],
    )
    assert columns(dsn) == ["id", "price", "qty", "total"], "add-total was not undone either"


async def test_a_failure_before_the_irreversible_step_unwinds_the_reversible_steps_in_reverse(
    dev_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, dsn: str
) -> None:
    """A step fails before drop-legacy: rolled back, fill-total and add-total undone newest first."""
    steps = [STEPS[0], STEPS[1], TYPO, STEPS[2]]
    async with worker(dev_env, task_queue, audit, dsn, platform(approvable=True)):
        handle = await approved(dev_env, task_queue, steps)
        result = await handle.result()
    assert (result.outcome, result.reverted) == (Outcome.ROLLED_BACK, ["orders"]), result.message
    assert columns(dsn) == ["id", "price", "qty", "legacy"], "back as it was; legacy never dropped"
    with psycopg.connect(dsn) as conn:
        undone = conn.execute(
            "SELECT step FROM changeguard_migrations WHERE idempotency_key LIKE %s "
            "ORDER BY finished_at",
            (f"{handle.id}:revert:%",),
        ).fetchall()
    assert [r[0] for r in undone] == ["fill-total", "add-total"]
