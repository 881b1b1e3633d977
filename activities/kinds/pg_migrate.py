"""The ``pg-migrate`` change kind: ordered schema steps and batched backfills on PostgreSQL.

Targets are databases named in the worker's settings: ``CHANGEGUARD_PG_TARGETS`` is a JSON object
of target id → DSN (``{"orders-eu": "postgresql://migrator@db-eu/orders"}``). A request names
targets by id only; no DSN, password or host travels in a change request or its history.

Params are ordered ``steps``. A step is either ``up`` SQL (DDL or DML, optional ``down`` SQL) or a
``backfill``: ``{table, key, set, where?, batch}`` runs, batch after batch,
``UPDATE table SET <set> WHERE key IN (next <batch> keys after the last one, in key order)`` until
no row is left. ``reversible`` defaults to "has a ``down``"; a step that destroys data
(``DROP COLUMN``) says ``reversible: false`` and the ``irreversible-steps`` guardrail makes the
change need the platform's approval.

Exactly once, per step (:mod:`activities.kinds.pg_steps`, the database side): a table in the target
database, ``changeguard_migrations``, keyed by (idempotency key, step), records each step in the
same transaction as the step's SQL, so a step either ran and is recorded or did neither. Every step
runs in its own transaction; a backfill runs each batch in its own transaction together with the
update of its row's ``last_key``, under a row lock, so no batch is ever applied twice — not after a
SIGKILL, and not by a late attempt running beside the retry. The heartbeat checkpoint
(:class:`PgMigrateCheckpoint`, after every batch) is the hint a retried attempt logs and status
shows; the committed ``last_key`` is the truth it resumes from.

Revert (``revert_if_applied``) walks the steps backwards: steps the forward key never ran are
skipped, reversible ones run ``down`` (recorded under the compensation's own key, so once), and the
first applied irreversible step stops the walk with a non-retryable ``IrreversibleStep`` error
naming it and the steps reverted so far: nothing pretends to undo it.

Errors: connection failures, lock and statement timeouts and serialization failures are retryable
``TargetUnavailable``; SQL the database refuses (syntax, constraint, missing table) is
``TargetRejected`` with the steps done so far in the error's details.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, ClassVar

import psycopg
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from temporalio.exceptions import ApplicationError

from activities.kinds.base import ChangeKind
from activities.kinds.pg_steps import (
    TABLE,
    backfill,
    down,
    ensure_table,
    recorded,
    step_record,
    up,
)
from activities.kinds.progress import Progress
from activities.resilience import retryable_error
from workflows.errors import IRREVERSIBLE_STEP, TARGET_REJECTED, TARGET_UNAVAILABLE
from workflows.models import ApplyResult, Target, TargetState
from workflows.progress_models import MutationOptions, StepDeclaration, StepRecord
from workflows.types import Duration

log = structlog.get_logger(__name__)

TARGETS_ENV = "CHANGEGUARD_PG_TARGETS"
"""A compensation reached a step that cannot be undone; non-retryable: a human decides."""

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
_STEP = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class Backfill(BaseModel):
    """A batched ``UPDATE``: ``set`` on rows in ``key`` order, ``batch`` rows per transaction."""

    model_config = ConfigDict(extra="forbid")

    table: str = Field(description="the table, optionally schema-qualified")
    key: str = Field(description="a unique, ordered column (the primary key)")
    set: str = Field(min_length=1, description="the SET clause, e.g. 'total = price * qty'")
    where: str | None = Field(default=None, description="only rows matching this condition")
    batch: int = Field(default=1000, ge=1, le=100_000)

    @field_validator("table", "key")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not _IDENT.match(v):
            raise ValueError(f"{v!r} is not a plain SQL identifier (letters, digits, _; schema.)")
        return v


class MigrationStep(BaseModel):
    """One step: ``up`` SQL (optional ``down``) or a ``backfill``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="unique in the change: [a-z0-9][a-z0-9_.-]*")
    up: str | None = Field(default=None, min_length=1)
    down: str | None = Field(default=None, min_length=1)
    backfill: Backfill | None = None
    reversible: bool | None = Field(
        default=None, description="whether it can be undone (default: it has a down)"
    )
    note: str = Field(default="", max_length=500)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _STEP.match(v):
            raise ValueError(f"step name {v!r} must match [a-z0-9][a-z0-9_.-]* (≤ 64)")
        return v

    @model_validator(mode="after")
    def _shape(self) -> MigrationStep:
        if (self.up is None) == (self.backfill is None):
            raise ValueError(f"step {self.name}: give exactly one of up or backfill")
        if self.reversible is None:
            self.reversible = self.down is not None
        if self.reversible and self.down is None:
            raise ValueError(f"step {self.name}: reversible: true needs a down")
        return self


class PgMigrateParams(BaseModel):
    """Parameters of a ``pg-migrate`` change."""

    model_config = ConfigDict(extra="forbid")

    steps: list[MigrationStep] = Field(min_length=1, max_length=100)
    timeout: Duration = Field(default=timedelta(hours=6), description="one target's whole run")
    heartbeat_interval: Duration = Field(default=timedelta(seconds=10))
    stall_after: Duration = Field(
        default=timedelta(minutes=5), description="a batch taking longer reads 'stalled'"
    )
    statement_timeout: Duration = Field(default=timedelta(minutes=10))
    lock_timeout: Duration = Field(default=timedelta(seconds=10))

    @field_validator("steps")
    @classmethod
    def _unique(cls, v: list[MigrationStep]) -> list[MigrationStep]:
        names = [s.name for s in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"step names must be unique: {', '.join(twice)} used twice")
        return v

    @field_validator("timeout", "heartbeat_interval", "stall_after", "statement_timeout")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("must be positive")
        return v


class PgMigrateCheckpoint(BaseModel):
    """Progress of one target's migration, heartbeated after every step and batch."""

    step: str = ""
    step_index: int = 0
    last_key: Any = None
    rows: int = 0
    batches: int = 0
    steps_done: list[str] = Field(default_factory=list)


def load_targets(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Target id → DSN from ``CHANGEGUARD_PG_TARGETS`` (JSON object); empty when unset."""
    raw = (env if env is not None else os.environ).get(TARGETS_ENV, "").strip()
    if not raw:
        return {}
    value = json.loads(raw)
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{TARGETS_ENV} must be a JSON object of target id → DSN")
    return value


class PgMigrate(ChangeKind[PgMigrateParams]):
    """Run ordered migration steps and batched backfills on PostgreSQL databases, once each.

    Args:
        targets: target id → DSN (default: ``CHANGEGUARD_PG_TARGETS``, read at each use).
    """

    name: ClassVar[str] = "pg-migrate"
    params_model: ClassVar[type[BaseModel]] = PgMigrateParams
    reversible: ClassVar[bool] = True
    checkpoint_model: ClassVar[type[BaseModel] | None] = PgMigrateCheckpoint
    description: ClassVar[str] = "ordered SQL steps and batched backfills, each applied once"

    def __init__(self, targets: Mapping[str, str] | None = None) -> None:
        self._targets = dict(targets) if targets is not None else None

    def options(self, params: PgMigrateParams) -> MutationOptions:
        """Timeouts from the params: hours for a backfill, beats every ``heartbeat_interval``."""
        return MutationOptions(
            start_to_close=params.timeout,
            heartbeat_interval=params.heartbeat_interval,
            stall_after=params.stall_after,
        )

    def steps(self, params: PgMigrateParams) -> list[StepDeclaration]:
        """Every step with its reversibility (``DROP COLUMN`` and friends: ``reversible: false``)."""
        return [
            StepDeclaration(name=s.name, reversible=bool(s.reversible), note=s.note)
            for s in params.steps
        ]

    def _dsn(self, target: Target) -> str:
        targets = self._targets if self._targets is not None else load_targets()
        try:
            return targets[target.id]
        except KeyError:
            known = ", ".join(sorted(targets)) or "none"
            raise ApplicationError(
                f"no database is configured for target {target.id!r} in the worker's "
                f"{TARGETS_ENV} (known: {known})",
                type=TARGET_REJECTED,
                non_retryable=True,
            ) from None

    async def _connect(self, target: Target) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(
                self._dsn(target),
                autocommit=True,
                connect_timeout=10,
                application_name="changeguard pg-migrate",
            )
        except psycopg.OperationalError as exc:
            raise retryable_error(
                f"{target.id}: cannot connect: {str(exc).strip()[:300]}", type=TARGET_UNAVAILABLE
            ) from exc

    # ------------------------------------------------------------------ apply

    async def apply(
        self,
        params: PgMigrateParams,
        target: Target,
        *,
        idempotency_key: str,
        progress: Progress[PgMigrateCheckpoint] | None = None,
    ) -> ApplyResult:
        """Run every step not yet recorded under ``idempotency_key``, in order."""
        progress = progress or Progress(kind=self.name, target=target.id)
        if progress.resumed_from is not None:
            log.info("resuming", target=target.id, checkpoint=progress.resumed_from.model_dump())
        records: list[StepRecord] = []
        conn = await self._connect(target)
        async with conn:
            try:
                await ensure_table(conn)
                done = await recorded(conn, idempotency_key)
                cp = PgMigrateCheckpoint()
                for index, step in enumerate(params.steps):
                    cp = cp.model_copy(update={"step": step.name, "step_index": index})
                    state = done.get(step.name, {}).get("state")
                    if state == "done":
                        records.append(
                            step_record(step, "already", "recorded by an earlier attempt")
                        )
                    elif step.backfill is not None:
                        records.append(
                            await backfill(conn, params, step, idempotency_key, progress, cp)
                        )
                    else:
                        records.append(await up(conn, params, step, idempotency_key))
                    cp.steps_done.append(step.name)
                    progress.checkpoint(cp.model_copy(), stage=f"done {step.name}")
            except psycopg.Error as exc:
                raise _sql_error(target, records, exc) from exc
        return _result(target, records, "migrated")

    # ------------------------------------------------------------------ revert

    async def revert_if_applied(
        self,
        params: PgMigrateParams,
        target: Target,
        *,
        applied_key: str,
        idempotency_key: str,
        progress: Progress[PgMigrateCheckpoint] | None = None,
    ) -> ApplyResult:
        """Undo, newest first, the steps ``applied_key`` ran; stop at an irreversible one."""
        progress = progress or Progress(kind=self.name, target=target.id)
        records: list[StepRecord] = []
        conn = await self._connect(target)
        async with conn:
            try:
                await ensure_table(conn)
                applied = await recorded(conn, applied_key)
                reverted = await recorded(conn, idempotency_key)
                for step in reversed(params.steps):
                    if step.name not in applied:
                        continue
                    if step.name in reverted:
                        records.append(
                            step_record(step, "already", "reverted by an earlier attempt")
                        )
                        continue
                    if not step.reversible or step.down is None:
                        raise _irreversible(target, step, records)
                    progress.stage(f"reverting {step.name}")
                    records.append(await down(conn, params, step, idempotency_key))
            except psycopg.Error as exc:
                raise _sql_error(target, records, exc) from exc
        if not records:
            return ApplyResult(
                target_id=target.id,
                applied=False,
                detail=f"nothing to revert: {applied_key} ran no step on {target.id}",
            )
        return _result(target, records, "reverted")

    async def describe(self, params: PgMigrateParams, target: Target) -> TargetState:
        """Reachable, the server version, and how many steps the migrations table records."""
        try:
            conn = await self._connect(target)
        except ApplicationError as exc:
            return TargetState(
                target_id=target.id,
                reachable=False,
                healthy=False,
                detail={"error": exc.message, "error_type": exc.type},
            )
        async with conn:
            version = (await (await conn.execute("SHOW server_version")).fetchone() or [""])[0]
            found = await (await conn.execute("SELECT to_regclass(%s)", (TABLE,))).fetchone()
            steps = 0
            if found and found[0] is not None:
                row = await (await conn.execute(f"SELECT count(*) FROM {TABLE}")).fetchone()
                steps = int(row[0]) if row else 0
        return TargetState(
            target_id=target.id,
            reachable=True,
            healthy=True,
            version=str(version),
            detail={"recorded_steps": steps},
        )


# ---------------------------------------------------------------------- results


def _result(target: Target, records: list[StepRecord], verb: str) -> ApplyResult:
    now = [r.name for r in records if r.state in ("applied", "reverted")]
    earlier = [r.name for r in records if r.state == "already"]
    parts = [f"{verb} {', '.join(now)}" if now else ""]
    if earlier:
        parts.append(f"already by an earlier attempt: {', '.join(earlier)}")
    return ApplyResult(
        target_id=target.id,
        applied=bool(now),
        replayed=bool(earlier) and not now,
        detail="; ".join(p for p in parts if p) + f" on {target.id}",
        after={"steps": [r.name for r in records]},
        steps=[r.model_dump(mode="json") for r in records],
        irreversible=[r.name for r in records if not r.reversible and verb == "migrated"],
    )


def _details(records: list[StepRecord], **extra: Any) -> dict[str, Any]:
    return {
        "steps": [r.model_dump(mode="json") for r in records],
        "irreversible": [r.name for r in records if not r.reversible and r.state != "reverted"],
        **extra,
    }


def _irreversible(
    target: Target, step: MigrationStep, records: list[StepRecord]
) -> ApplicationError:
    done = ", ".join(r.name for r in records) or "none"
    return ApplicationError(
        f"{target.id}: step {step.name} ran and cannot be undone (reversible: false); reverted "
        f"before it: {done}; a human decides: roll forward, or repair {target.id} by hand",
        _details(records, blocked_at=step.name),
        type=IRREVERSIBLE_STEP,
        non_retryable=True,
    )


_RETRYABLE_SQLSTATES = ("40001", "40P01", "55P03", "57014", "08")
"""Serialization failure, deadlock, lock not available, statement timeout, connection class."""


def _sql_error(target: Target, records: list[StepRecord], exc: psycopg.Error) -> ApplicationError:
    state = exc.sqlstate or ""
    message = f"{target.id}: {type(exc).__name__}: {str(exc).strip()[:500]}"
    if isinstance(exc, psycopg.OperationalError) or state.startswith(_RETRYABLE_SQLSTATES):
        return retryable_error(message, type=TARGET_UNAVAILABLE, details=_details(records))
    return ApplicationError(
        message, _details(records, sqlstate=state), type=TARGET_REJECTED, non_retryable=True
    )
