"""The database side of ``pg-migrate``: its migrations table and each step's SQL, in transactions.

The table ``changeguard_migrations`` in every target database records each step under (idempotency
key, step) in the same transaction as the step's SQL (:func:`up`, :func:`down`), so a step either ran
and is recorded or did neither. A backfill (:func:`backfill`) runs each batch in its own
transaction together with the update of its row's ``last_key``, under a row lock, so no batch is
ever applied twice. :mod:`activities.kinds.pg_migrate` (the change kind) walks the steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
import structlog
from psycopg import sql
from psycopg.types.json import Jsonb

from workflows.progress_models import StepRecord

if TYPE_CHECKING:
    from activities.kinds.pg_migrate import (
        Backfill,
        MigrationStep,
        PgMigrateCheckpoint,
        PgMigrateParams,
    )
    from activities.kinds.progress import Progress

log = structlog.get_logger(__name__)

TABLE = "changeguard_migrations"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    idempotency_key text NOT NULL,
    step text NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'done')),
    reversible boolean NOT NULL,
    last_key jsonb,
    rows bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (idempotency_key, step)
)
"""


def _ident(value: str) -> sql.Composable:
    """``schema.table`` or ``column`` as a quoted identifier."""
    return sql.SQL(".").join(sql.Identifier(part) for part in value.split("."))


async def ensure_table(conn: psycopg.AsyncConnection[Any]) -> None:
    """Create the migrations table once, even with several workers starting at once."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (TABLE,))
        await conn.execute(_SCHEMA)


async def recorded(conn: psycopg.AsyncConnection[Any], key: str) -> dict[str, dict[str, Any]]:
    """The steps recorded under ``key``, by name: their state, ``last_key`` and row count."""
    cur = await conn.execute(
        f"SELECT step, state, last_key, rows FROM {TABLE} WHERE idempotency_key = %s", (key,)
    )
    return {r[0]: {"state": r[1], "last_key": r[2], "rows": r[3]} for r in await cur.fetchall()}


async def limits(conn: psycopg.AsyncConnection[Any], params: PgMigrateParams) -> None:
    """Statement and lock timeouts for the current transaction only."""
    for name, value in (
        ("statement_timeout", params.statement_timeout),
        ("lock_timeout", params.lock_timeout),
    ):
        ms = max(1, int(value.total_seconds() * 1000))
        await conn.execute("SELECT set_config(%s, %s, true)", (name, f"{ms}ms"))


async def claim(
    conn: psycopg.AsyncConnection[Any], key: str, step: MigrationStep, state: str
) -> bool:
    """Record the step under ``key`` in this transaction; False when it already is."""
    cur = await conn.execute(
        f"INSERT INTO {TABLE} (idempotency_key, step, state, reversible, finished_at) "
        "VALUES (%s, %s, %s, %s, CASE WHEN %s = 'done' THEN now() END) "
        "ON CONFLICT DO NOTHING RETURNING 1",
        (key, step.name, state, bool(step.reversible), state),
    )
    return await cur.fetchone() is not None


async def up(
    conn: psycopg.AsyncConnection[Any], params: PgMigrateParams, step: MigrationStep, key: str
) -> StepRecord:
    """Run the step's ``up`` SQL and record it under ``key``, in one transaction (once)."""
    assert step.up is not None
    async with conn.transaction():
        await limits(conn, params)
        if not await claim(conn, key, step, "done"):  # a late attempt committed it meanwhile
            return step_record(step, "already", "recorded by a concurrent attempt")
        await conn.execute(step.up.encode())
    return step_record(step, "applied", "ran up")


async def down(
    conn: psycopg.AsyncConnection[Any], params: PgMigrateParams, step: MigrationStep, key: str
) -> StepRecord:
    """Run the step's ``down`` SQL and record it under ``key``, in one transaction (once)."""
    assert step.down is not None
    async with conn.transaction():
        await limits(conn, params)
        if not await claim(conn, key, step, "done"):
            return step_record(step, "already", "reverted by a concurrent attempt")
        await conn.execute(step.down.encode())
    return step_record(step, "reverted", "ran down")


def _literal(fragment: str) -> str:
    """A request's SQL fragment inside a parameterised statement: its ``%`` is not a placeholder."""
    return fragment.replace("%", "%%")


def batch_sql(fill: Backfill, first: bool) -> sql.Composed:
    """One batch: the next ``batch`` keys after ``%(last)s``, updated; returns (max key, count)."""
    table, key = _ident(fill.table), _ident(fill.key)
    conditions: list[sql.Composable] = []
    if not first:
        conditions.append(sql.SQL("{} > %(last)s").format(key))
    if fill.where:
        conditions.append(sql.SQL("(") + sql.SQL(_literal(fill.where)) + sql.SQL(")"))
    where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
    return sql.SQL(
        "WITH cg_batch AS (SELECT {key} AS cg_key FROM {table}{where} ORDER BY {key} "
        "LIMIT %(batch)s), cg_done AS (UPDATE {table} AS cg_t SET {set} FROM cg_batch "
        "WHERE cg_t.{key} = cg_batch.cg_key RETURNING cg_batch.cg_key) "
        "SELECT max(cg_key), count(*) FROM cg_done"
    ).format(key=key, table=table, where=where, set=sql.SQL(_literal(fill.set)))


async def backfill(
    conn: psycopg.AsyncConnection[Any],
    params: PgMigrateParams,
    step: MigrationStep,
    key: str,
    progress: Progress[PgMigrateCheckpoint],
    cp: PgMigrateCheckpoint,
) -> StepRecord:
    """Batch after batch, each with its ``last_key`` in one transaction, under the row's lock."""
    fill = step.backfill
    assert fill is not None
    async with conn.transaction():
        await claim(conn, key, step, "running")
    hint = progress.resumed_from
    applied_now = 0
    while True:
        async with conn.transaction():
            await limits(conn, params)
            cur = await conn.execute(
                f"SELECT state, last_key, rows FROM {TABLE} "
                "WHERE idempotency_key = %s AND step = %s FOR UPDATE",
                (key, step.name),
            )
            row = await cur.fetchone()
            assert row is not None
            state, last, rows = row
            if hint is not None and hint.step == step.name and hint.last_key != last:
                log.info("checkpoint was stale", step=step.name, hint=hint.last_key, real=last)
            hint = None
            if state == "done":
                break
            found = await (
                await conn.execute(
                    batch_sql(fill, last is None), {"last": last, "batch": fill.batch}
                )
            ).fetchone()
            top, count = (found or (None, 0))[0], int((found or (None, 0))[1])
            if count == 0:
                await conn.execute(
                    f"UPDATE {TABLE} SET state = 'done', finished_at = now() "
                    "WHERE idempotency_key = %s AND step = %s",
                    (key, step.name),
                )
                break
            rows += count
            applied_now += count
            await conn.execute(
                f"UPDATE {TABLE} SET last_key = %s, rows = %s "
                "WHERE idempotency_key = %s AND step = %s",
                (Jsonb(top), rows, key, step.name),
            )
        cp.last_key, cp.rows, cp.batches = top, rows, cp.batches + 1
        progress.checkpoint(cp.model_copy(), stage=f"backfilling {step.name}")
    if applied_now == 0:
        return step_record(step, "already", f"finished by an earlier attempt ({rows} rows)")
    return step_record(
        step, "applied", f"{rows} rows in {fill.table} ({applied_now} by this attempt)"
    )


def step_record(step: MigrationStep, state: str, detail: str) -> StepRecord:
    """What became of one step (``applied``, ``reverted``, ``already``), for results and errors."""
    return StepRecord(name=step.name, reversible=bool(step.reversible), state=state, detail=detail)
