"""Worker failure mid-backfill: SIGKILL the worker during a 200,000-row pg-migrate backfill.

Real and out of process where it matters: the Temporal dev server, a PostgreSQL cluster of its own
(``tests.servers.PostgresServer``), and each worker a separate process (this module run as
``python -m tests.chaos.test_backfill_kill``, which registers ``pg-migrate`` in the worker's kind
registry). The first worker is SIGKILLed while batches commit; the server notices through the
heartbeat timeout and retries the mutation on the second worker, which resumes from the committed
``last_key`` (its heartbeat checkpoint is only a hint). Every row carries a ``touched`` counter that
the backfill's ``SET`` increments: at most one batch may be touched twice, and the data is exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.chaos.processes import WorkerProcess
from tests.servers import PostgresServer
from workflows.models import ChangeRequest, ChangeResult, ChangeStatus, Outcome

ROWS = 200_000
BATCH = 500
KILL_AT_ROWS = 40_000

BACKFILL_STEP: dict[str, Any] = {
    "name": "fill-total",
    "backfill": {
        "table": "orders",
        "key": "id",
        "set": "total = price * qty, touched = touched + 1",
        "batch": BATCH,
    },
    "down": "UPDATE orders SET total = NULL",
}


def seed(dsn: str, rows: int) -> None:
    """An ``orders`` table of ``rows`` rows whose ``total`` the backfill fills."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, price int NOT NULL, qty int NOT NULL, "
            "total bigint, touched int NOT NULL DEFAULT 0)"
        )
        conn.execute(
            "INSERT INTO orders (id, price, qty) "
            "SELECT g, g %% 997, 1 + g %% 7 FROM generate_series(1, %s) g",
            (rows,),
        )


def progress_row(dsn: str) -> tuple[str, int] | None:
    """(state, rows) of the backfill in the migrations table, if it has started."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('changeguard_migrations')").fetchone() == (None,):
            return None
        row = conn.execute(
            "SELECT state, rows FROM changeguard_migrations WHERE step = 'fill-total'"
        ).fetchone()
    return None if row is None else (str(row[0]), int(row[1]))


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def spawn(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> Iterator[Callable[[str, dict[str, str]], WorkerProcess]]:
    """Start worker processes on the test's task queue; all are killed at teardown."""
    (tmp_path / "operators.yaml").write_text("operators: {}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "CHANGEGUARD_"))}
    env.update(
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=dev_env.client.namespace,
        CHANGEGUARD_TASK_QUEUE=task_queue,
        CHANGEGUARD_AUDIT_URL=f"sqlite:///{tmp_path / 'audit.db'}",
        CHANGEGUARD_DIRECTORY=f"yaml:{tmp_path / 'operators.yaml'}",
        CHANGEGUARD_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    started: list[WorkerProcess] = []

    def start(name: str, extra: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(
            name,
            {**env, **extra},
            tmp_path / f"{name}.log",
            module=("tests.chaos.test_backfill_kill",),
            ready_marker="worker polling",
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


async def attempts(handle: WorkflowHandle[Any, Any]) -> list[tuple[int, str]]:
    """(attempt, worker identity) of every started apply_change attempt."""
    out = []
    scheduled: set[int] = set()
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if event.activity_task_scheduled_event_attributes.activity_type.name == "apply_change":
                scheduled.add(event.event_id)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = event.activity_task_started_event_attributes
            if attrs.scheduled_event_id in scheduled:
                out.append((attrs.attempt, attrs.identity))
    return out


@pytest.mark.timeout(120)
async def test_sigkilled_worker_mid_backfill_resumes_from_the_checkpoint(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    postgres: PostgresServer,
    spawn: Callable[[str, dict[str, str]], WorkerProcess],
) -> None:
    """A worker SIGKILLed mid-backfill: a second resumes; ≤ one batch redone, the data exact."""
    dsn = postgres.create_database(f"orders_{uuid.uuid4().hex[:8]}")
    seed(dsn, ROWS)
    extra = {"CHANGEGUARD_PG_TARGETS": json.dumps({"orders": dsn})}
    first = spawn("worker-1", extra)
    await first.ready()
    request = ChangeRequest(
        change_id=f"backfill-{uuid.uuid4().hex[:10]}",
        kind="pg-migrate",
        summary="backfill orders.total through a worker crash",
        requester="alice",
        team="data",
        environment="prod",
        targets=[{"id": "orders"}],
        params={"steps": [BACKFILL_STEP], "heartbeat_interval": "1s"},
        rollout={"waves": ["100%"], "max_parallel": 1, "bake": "0s"},
    )
    handle = await dev_env.client.start_workflow(
        "GuardedChange",
        request,
        id=request.change_id,
        task_queue=task_queue,
        result_type=ChangeResult,
    )
    workers = [first]

    def logs() -> str:
        return "\n".join(w.tail() for w in workers)

    deadline = time.monotonic() + 60
    seen: tuple[str, int] | None = None
    while time.monotonic() < deadline:
        seen = progress_row(dsn)
        if seen is not None and seen[1] >= KILL_AT_ROWS:
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError(f"the backfill never reached {KILL_AT_ROWS} rows ({seen})\n{logs()}")
    first.kill()
    at_kill = progress_row(dsn)
    assert at_kill is not None and at_kill[0] == "running", f"killed too late: {at_kill}"

    second = spawn("worker-2", extra)
    workers.append(second)
    await second.ready()
    try:
        result = await asyncio.wait_for(handle.result(), timeout=90)
    except TimeoutError:
        status = await handle.query("status", result_type=ChangeStatus)
        raise AssertionError(f"not finished: {status.phase}: {status.message}\n{logs()}") from None
    assert (result.outcome, result.applied) == (Outcome.COMPLETED, ["orders"]), (
        f"{result.message}\n{logs()}"
    )

    with psycopg.connect(dsn, autocommit=True) as conn:
        twice, never, wrong, rows = conn.execute(
            "SELECT count(*) FILTER (WHERE touched > 1), count(*) FILTER (WHERE touched = 0), "
            "count(*) FILTER (WHERE total IS DISTINCT FROM price::bigint * qty), count(*) "
            "FROM orders"
        ).fetchone() or (None, None, None, None)
        recorded = conn.execute(
            "SELECT state, rows FROM changeguard_migrations WHERE step = 'fill-total'"
        ).fetchone()
    assert (never, wrong, rows) == (0, 0, ROWS)
    assert twice is not None and twice <= BATCH, f"{twice} rows were backfilled more than once"
    assert recorded == ("done", ROWS)
    # History records the attempt that finished: a retry (attempt > 1) on the second worker.
    tried = await attempts(handle)
    assert len(tried) == 1 and tried[0][0] >= 2, f"the mutation was never retried: {tried}"
    assert tried[0][1].startswith(f"{second.proc.pid}@"), tried
    print(
        f"\nkilled at {at_kill[1]} rows; rows touched twice: {twice}; attempts: {tried}; "
        f"resumed on worker-2"
    )


async def _worker_main() -> None:
    """A worker whose kinds include ``pg-migrate`` (until the entry point is installed)."""
    from activities.kinds.base import default_registry
    from activities.kinds.pg_migrate import PgMigrate
    from tests.helpers import OPEN_BUNDLE
    from worker.client import connect
    from worker.main import build_worker
    from worker.settings import Settings

    kinds = default_registry()
    if "pg-migrate" not in kinds:
        kinds.register(PgMigrate)
    settings = Settings.from_env()
    client = await connect(settings)
    worker = build_worker(client, settings, bundle=OPEN_BUNDLE, kinds=kinds)
    async with worker:
        print("worker polling", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_worker_main())
