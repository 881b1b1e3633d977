"""The audit store (the change ledger): append-only, idempotent, hash-chained, SQLite or PostgreSQL.

Temporal history has a retention period, so approvals, refusals, operator actions and the change's
story (started, gate decisions, effects, outcome) are also appended here (invariant I6): a SQLite
file by default (``sqlite:///PATH``), PostgreSQL in production (``postgresql://...``).

- **Append-only** at the database level: triggers refuse UPDATE, DELETE and TRUNCATE (PostgreSQL)
  and, on SQLite, an INSERT over an existing record (``REPLACE INTO``, upserts).
- **Idempotent**: ``record_id`` is unique; a retried or late append adds nothing.
- **Tamper-evident**: every row carries ``prev_hash`` and ``record_hash`` (see
  :mod:`activities.audit_chain`); appends are serialised per store (SQLite ``BEGIN IMMEDIATE``,
  PostgreSQL a transaction-scoped advisory lock), so concurrent workers keep one chain.
- **A change id is claimed once**: the ``started`` record is unique per ``change_id`` (a partial
  unique index), written by :meth:`claim` in the same serialised transaction.
- **Bounded**: a record with NUL characters or over-long fields is refused before it reaches the
  database (:func:`activities.audit_chain.check_record`), so it fails once, not on every retry.

Errors::

    Exception
    └── AuditStoreError       the audit store cannot be opened, written or read (``retryable``)
        ├── AuditUrlError     an audit URL has a scheme other than sqlite:/// or postgresql://
        └── AuditRecordInvalid a record no store can keep (NUL, over-long, not JSON): never retry
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from activities.audit_chain import (
    ChainRow,
    RecordInvalid,
    chain_hash,
    check_record,
    content_of,
    iso,
    normalise_detail,
)
from workflows.models import (
    AuditAction,
    AuditQuery,
    AuditRecord,
    ClaimChangeInput,
    ClaimChangeResult,
)

T = TypeVar("T")

DEFAULT_AUDIT_URL = "sqlite:///.changeguard/audit.db"
TABLE = "audit_records"
STARTED = AuditAction.STARTED.value

Records = list[AuditRecord]
"""A listing of audit records (an alias: the stores' ``list`` method shadows the builtin)."""
Entries = list["AuditEntry"]
"""A listing of stored records with their hashes."""

_COLUMNS = (
    "record_id, action, actor, at, change_id, run_id, guardrail, policy_hash, report_hash, "
    "reason, expires_at, detail"
)
_NAMES = [c.strip() for c in _COLUMNS.split(",")]
_CHAIN_COLUMNS = f"seq, {_COLUMNS}, prev_hash, record_hash"


class AuditStoreError(Exception):
    """The audit store cannot be opened, written or read.

    Attributes:
        retryable: whether trying again may help (a lost connection, a locked file); False when
            the database refused the values themselves.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class AuditUrlError(AuditStoreError):
    """An audit store URL names no supported store."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class AuditRecordInvalid(AuditStoreError):
    """A record no store can keep as it is; ``problems`` lists why. Retrying never helps."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("audit record refused: " + "; ".join(problems), retryable=False)
        self.problems = list(problems)


@dataclass(frozen=True)
class AuditEntry:
    """A stored record with its place in the store and the chain."""

    seq: int
    record: AuditRecord
    prev_hash: str
    record_hash: str

    def as_json(self) -> dict[str, Any]:
        """The record's JSON with ``seq``, ``prev_hash`` and ``record_hash`` added."""
        return {
            **self.record.model_dump(mode="json"),
            "seq": self.seq,
            "prev_hash": self.prev_hash,
            "record_hash": self.record_hash,
        }


class AuditStore(Protocol):
    """Where audit records go: append-only, idempotent by ``record_id``, blocking calls."""

    def append(self, record: AuditRecord) -> bool:
        """Append a record; False when one with its ``record_id`` exists (nothing is written)."""
        ...

    def claim(self, inp: ClaimChangeInput, *, bundle_hash: str = "") -> ClaimChangeResult:
        """Write the change's ``started`` record unless its id is claimed; who holds the id."""
        ...

    def list(self, query: AuditQuery) -> Records:
        """The most recent ``query.limit`` records (of one change, if given), oldest first."""
        ...

    def entries(self, query: AuditQuery) -> Entries:
        """As :meth:`list`, with each record's storage order and hashes."""
        ...

    def chain(self, *, batch: int = 5000) -> Iterator[ChainRow]:
        """Every stored row in storage order, as stored (for verification)."""
        ...

    def count(self) -> int:
        """How many records the store holds."""
        ...

    def close(self) -> None:
        """Release the connection; safe to call twice."""
        ...


def _started_record(inp: ClaimChangeInput, bundle_hash: str) -> AuditRecord:
    return AuditRecord(
        record_id=f"started:{inp.change_id}",
        action=AuditAction.STARTED,
        actor=inp.requester or "changeguard",
        at=inp.at,
        change_id=inp.change_id,
        run_id=inp.run_id,
        policy_hash=bundle_hash,
        reason="change id claimed",
        detail={
            "request_digest": inp.request_digest,
            "team": inp.team,
            "run_id": inp.run_id,
            **({"requester_identity": inp.requester_identity} if inp.requester_identity else {}),
        },
    )


def _checked(record: AuditRecord) -> AuditRecord:
    """The record as it will be stored (detail normalised), or :class:`AuditRecordInvalid`."""
    try:
        check_record(record)
    except RecordInvalid as exc:
        raise AuditRecordInvalid(exc.problems) from None
    return record.model_copy(update={"detail": normalise_detail(record.detail)})


class _Tx(Protocol):
    """What one serialised append transaction can do, per database."""

    def exists(self, record_id: str) -> bool: ...

    def started(self, change_id: str) -> tuple[str, datetime] | None: ...

    def last_hash(self) -> str: ...

    def insert(self, record: AuditRecord, prev_hash: str, record_hash: str) -> None: ...


def _append_in(tx: _Tx, record: AuditRecord) -> bool:
    if tx.exists(record.record_id):
        return False
    prev = tx.last_hash()
    tx.insert(record, prev, chain_hash(content_of(record), prev))
    return True


def _claim_in(tx: _Tx, inp: ClaimChangeInput, bundle_hash: str) -> ClaimChangeResult:
    held = tx.started(inp.change_id)
    if held is not None:
        run_id, at = held
        return ClaimChangeResult(
            claimed=run_id == inp.run_id, run_id=run_id, at=at, bundle_hash=bundle_hash
        )
    record = _checked(_started_record(inp, bundle_hash))
    _append_in(tx, record)
    return ClaimChangeResult(claimed=True, run_id=inp.run_id, at=inp.at, bundle_hash=bundle_hash)


# --------------------------------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------------------------------

_SQLITE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id TEXT NOT NULL UNIQUE,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    at TEXT NOT NULL,
    change_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    guardrail TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    report_hash TEXT NOT NULL,
    reason TEXT NOT NULL,
    expires_at TEXT,
    detail TEXT NOT NULL,
    recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    prev_hash TEXT NOT NULL DEFAULT '',
    record_hash TEXT NOT NULL DEFAULT ''
);
"""
_SQLITE_REST = f"""
CREATE INDEX IF NOT EXISTS {TABLE}_change_at ON {TABLE} (change_id, at, seq);
CREATE INDEX IF NOT EXISTS {TABLE}_at ON {TABLE} (at, seq);
CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_started_once ON {TABLE} (change_id)
    WHERE action = '{STARTED}';
CREATE TRIGGER IF NOT EXISTS {TABLE}_no_update BEFORE UPDATE ON {TABLE}
BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: UPDATE is refused'); END;
CREATE TRIGGER IF NOT EXISTS {TABLE}_no_delete BEFORE DELETE ON {TABLE}
BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: DELETE is refused'); END;
CREATE TRIGGER IF NOT EXISTS {TABLE}_no_replace BEFORE INSERT ON {TABLE}
WHEN EXISTS (SELECT 1 FROM {TABLE} WHERE record_id = NEW.record_id OR seq = NEW.seq
             OR (action = '{STARTED}' AND NEW.action = '{STARTED}' AND change_id = NEW.change_id))
BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: REPLACE over a stored record is refused'); END;
"""
# A REPLACE deletes the conflicting row without firing the DELETE trigger (unless recursive
# triggers are on), so the INSERT trigger refuses any insert that would conflict. Anyone who can
# write the file can still drop the triggers: the hash chain is what shows what they did.


def _where(
    query: AuditQuery, param: Callable[[str], str], at: Callable[[datetime], Any]
) -> tuple[str, dict[str, Any]]:
    """The WHERE clause and parameters of a query (``param`` spells a named placeholder)."""
    clauses: list[str] = []
    params: dict[str, Any] = {"limit": query.limit}
    if query.change_id is not None:
        clauses.append(f"change_id = {param('change_id')}")
        params["change_id"] = query.change_id
    if query.since is not None:
        clauses.append(f"at >= {param('since')}")
        params["since"] = at(query.since)
    if query.actions:
        names = [f"action_{i}" for i in range(len(query.actions))]
        clauses.append(f"action IN ({', '.join(param(n) for n in names)})")
        params |= {n: a.value for n, a in zip(names, query.actions, strict=True)}
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def exists(self, record_id: str) -> bool:
        sql = f"SELECT 1 FROM {TABLE} WHERE record_id = ?"
        return self.db.execute(sql, (record_id,)).fetchone() is not None

    def started(self, change_id: str) -> tuple[str, datetime] | None:
        sql = f"SELECT run_id, at FROM {TABLE} WHERE change_id = ? AND action = ?"
        row = self.db.execute(sql, (change_id, STARTED)).fetchone()
        return None if row is None else (row[0], datetime.fromisoformat(row[1]))

    def last_hash(self) -> str:
        row = self.db.execute(
            f"SELECT record_hash FROM {TABLE} ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return "" if row is None else str(row[0])

    def insert(self, record: AuditRecord, prev_hash: str, record_hash: str) -> None:
        data = content_of(record)
        data["detail"] = json.dumps(data["detail"], sort_keys=True, ensure_ascii=False)
        data.update(prev_hash=prev_hash, record_hash=record_hash)
        names = [*_NAMES, "prev_hash", "record_hash"]
        sql = (
            f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({', '.join(':' + n for n in names)})"
        )
        self.db.execute(sql, data)


def _sqlite_error(path: str, what: str, exc: sqlite3.Error) -> AuditStoreError:
    # The database refused the values themselves: the same write would be refused again.
    retryable = not isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError)
    return AuditStoreError(f"cannot {what} the audit database {path}: {exc}", retryable=retryable)


class SqliteAuditStore:
    """The default audit store: one SQLite file in WAL mode, shared safely by threads.

    Args:
        path: the database file (its directory is created), or ``":memory:"``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # Autocommit, with explicit BEGIN IMMEDIATE for every append (one chain per file).
            self._db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise AuditStoreError(f"cannot open the audit database {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an audit record survives power loss
            self._db.executescript(_SQLITE_TABLE)
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({TABLE})")}
            for column in ("prev_hash", "record_hash"):  # a store from before the chain
                if column not in columns:
                    self._db.execute(
                        f"ALTER TABLE {TABLE} ADD COLUMN {column} TEXT NOT NULL DEFAULT ''"
                    )
            self._db.executescript(_SQLITE_REST)
        except sqlite3.Error as exc:
            self._db.close()
            raise AuditStoreError(f"cannot open the audit database {self.path}: {exc}") from exc

    def _serialised(self, op: Callable[[_SqliteTx], T], what: str) -> T:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = op(_SqliteTx(self._db))
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                raise _sqlite_error(self.path, what, exc) from exc

    def append(self, record: AuditRecord) -> bool:
        """Append a record; False when its ``record_id`` is already stored."""
        stored = _checked(record)
        return self._serialised(lambda tx: _append_in(tx, stored), "write to")

    def claim(self, inp: ClaimChangeInput, *, bundle_hash: str = "") -> ClaimChangeResult:
        """Claim a change id for a run chain (see :func:`_claim_in`)."""
        return self._serialised(lambda tx: _claim_in(tx, inp, bundle_hash), "write to")

    def _read(self, sql: str, params: dict[str, Any] | tuple[Any, ...]) -> list[Any]:
        try:
            with self._lock:
                return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, "read", exc) from exc

    def entries(self, query: AuditQuery) -> Entries:
        """The most recent ``query.limit`` records matching ``query``, oldest first."""
        where, params = _where(query, lambda n: f":{n}", iso)
        sql = (
            f"SELECT {_CHAIN_COLUMNS} FROM (SELECT {_CHAIN_COLUMNS} FROM {TABLE} {where} "
            "ORDER BY at DESC, seq DESC LIMIT :limit) ORDER BY at, seq"
        )
        out = []
        for row in self._read(sql, params):
            data = dict(zip(_NAMES, row[1:13], strict=True))
            data["detail"] = json.loads(data["detail"])
            out.append(AuditEntry(row[0], AuditRecord.model_validate(data), row[13], row[14]))
        return out

    def list(self, query: AuditQuery) -> Records:
        """The most recent ``query.limit`` records (of one change, if given), oldest first."""
        return [e.record for e in self.entries(query)]

    def chain(self, *, batch: int = 5000) -> Iterator[ChainRow]:
        """Every stored row in storage order, content as stored (unparsable detail kept as text)."""
        after = -(2**63)
        sql = f"SELECT {_CHAIN_COLUMNS} FROM {TABLE} WHERE seq > ? ORDER BY seq LIMIT ?"
        while True:
            rows = self._read(sql, (after, batch))
            for row in rows:
                content = dict(zip(_NAMES, row[1:13], strict=True))
                # Detail that is not a JSON object (tampered) stays text: its hash will not match.
                with suppress(TypeError, ValueError, AssertionError):
                    content["detail"] = normalise_detail(json.loads(content["detail"]))
                yield ChainRow(row[0], content, str(row[13] or ""), str(row[14] or ""))
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def count(self) -> int:
        """How many records the file holds."""
        return int(self._read(f"SELECT count(*) FROM {TABLE}", ())[0][0])

    def close(self) -> None:
        """Close the database; safe to call twice."""
        with self._lock:
            self._db.close()


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------

_TRIGGERS = (f"{TABLE}_append_only", f"{TABLE}_no_truncate")
_STARTED_INDEX = f"{TABLE}_started_once"
_POSTGRES_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    action TEXT NOT NULL,
    actor TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    change_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    guardrail TEXT NOT NULL,
    policy_hash TEXT NOT NULL,
    report_hash TEXT NOT NULL,
    reason TEXT NOT NULL,
    expires_at TIMESTAMPTZ,
    detail JSONB NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS record_hash TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS {TABLE}_change_at ON {TABLE} (change_id, at, seq);
CREATE INDEX IF NOT EXISTS {TABLE}_at ON {TABLE} (at, seq);
CREATE UNIQUE INDEX IF NOT EXISTS {_STARTED_INDEX} ON {TABLE} (change_id)
    WHERE action = '{STARTED}';
CREATE OR REPLACE FUNCTION {TABLE}_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{TABLE} is append-only: % is refused', TG_OP;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = '{TABLE}'::regclass AND tgname = '{_TRIGGERS[0]}') THEN
        CREATE TRIGGER {_TRIGGERS[0]} BEFORE UPDATE OR DELETE ON {TABLE}
            FOR EACH ROW EXECUTE FUNCTION {TABLE}_refuse();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgrelid = '{TABLE}'::regclass AND tgname = '{_TRIGGERS[1]}') THEN
        CREATE TRIGGER {_TRIGGERS[1]} BEFORE TRUNCATE ON {TABLE}
            FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_refuse();
    END IF;
END
$$;
"""
_SCHEMA_LOCK = 0x63_67_61_75  # "cgau": serialises schema creation by workers starting together
_CHAIN_LOCK = 0x63_67_63_68  # "cgch": serialises appends, so the records form one chain
SCHEMA_FILE = "infra/postgres/audit-schema.sql"


def postgres_schema() -> str:
    """The DDL that creates (or upgrades) the PostgreSQL audit table, as its owner runs it."""
    return _POSTGRES_SCHEMA.strip() + "\n"


def _describe(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        p = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable DSN)"
    user = f"{p['user']}@" if p.get("user") else ""
    port = f":{p['port']}" if p.get("port") else ""
    return f"postgresql://{user}{p.get('host', '')}{port}/{p.get('dbname', '')}"


_Conn = psycopg.Connection[tuple[Any, ...]]
_NOT_RETRYABLE = (
    psycopg.errors.DataError,  # a value the server refuses (NUL in text, a bad JSON escape)
    psycopg.errors.IntegrityError,  # a constraint: the same write is refused again
)


class _PostgresTx:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn

    def exists(self, record_id: str) -> bool:
        sql = f"SELECT 1 FROM {TABLE} WHERE record_id = %s"
        return self.conn.execute(sql, (record_id,)).fetchone() is not None

    def started(self, change_id: str) -> tuple[str, datetime] | None:
        sql = f"SELECT run_id, at FROM {TABLE} WHERE change_id = %s AND action = %s"
        row = self.conn.execute(sql, (change_id, STARTED)).fetchone()
        return None if row is None else (row[0], row[1])

    def last_hash(self) -> str:
        sql = f"SELECT record_hash FROM {TABLE} ORDER BY seq DESC LIMIT 1"
        row = self.conn.execute(sql).fetchone()
        return "" if row is None else str(row[0])

    def insert(self, record: AuditRecord, prev_hash: str, record_hash: str) -> None:
        data = content_of(record)
        data["at"] = datetime.fromisoformat(data["at"])
        if data["expires_at"] is not None:
            data["expires_at"] = datetime.fromisoformat(data["expires_at"])
        data["detail"] = Jsonb(data["detail"])
        data.update(prev_hash=prev_hash, record_hash=record_hash)
        names = [*_NAMES, "prev_hash", "record_hash"]
        sql = (
            f"INSERT INTO {TABLE} ({', '.join(names)}) "
            f"VALUES ({', '.join(f'%({n})s' for n in names)})"
        )
        self.conn.execute(sql, data)


class PostgresAuditStore:
    """The production audit store: PostgreSQL through psycopg 3, one connection shared by threads.

    The schema is created (or upgraded) on first use when anything is missing. A deployment should
    instead create it as the table's owner (``infra/postgres/audit-schema.sql``) and grant the
    workers' role only INSERT and SELECT: then nothing a worker holds can drop a trigger, and a
    store whose schema is complete is used without any DDL.

    Args:
        dsn: a libpq connection string or ``postgresql://`` URL.
        connect_timeout: seconds to wait for a connection (unless the DSN says otherwise).
    """

    def __init__(self, dsn: str, *, connect_timeout: int = 10) -> None:
        self.dsn = dsn
        self.where = _describe(dsn)
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: _Conn | None = None
        with self._lock:
            self._run(self._create_schema, "open")

    def _connect(self) -> _Conn:
        if self._conn is None or self._conn.closed:
            params: dict[str, Any] = {
                "connect_timeout": self.connect_timeout,
                "application_name": "changeguard",
                **conninfo_to_dict(self.dsn),
            }
            self._conn = psycopg.connect(**params, autocommit=True)
            self._conn.execute("SET TIME ZONE 'UTC'")
        return self._conn

    def _run(self, op: Callable[[_Conn], T], what: str) -> T:
        """Run ``op(connection)``; a broken connection is dropped so the next call reconnects."""
        try:
            return op(self._connect())
        except psycopg.Error as exc:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._conn = None
            hint = ""
            if isinstance(exc, psycopg.errors.InsufficientPrivilege) and what == "open":
                hint = (
                    f" (the audit table is missing or out of date: create or upgrade it as its "
                    f"owner with {SCHEMA_FILE})"
                )
            raise AuditStoreError(
                f"cannot {what} the audit database {self.where}: {exc}{hint}",
                retryable=not isinstance(exc, _NOT_RETRYABLE),
            ) from exc

    @staticmethod
    def _create_schema(conn: _Conn) -> None:
        found = conn.execute(
            "SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) "
            "        AND tgname = ANY(%s)), "
            "       (SELECT count(*) FROM information_schema.columns WHERE table_name = %s "
            "        AND table_schema = current_schema() AND column_name = ANY(%s)), "
            "       to_regclass(%s) IS NOT NULL",
            (TABLE, list(_TRIGGERS), TABLE, ["prev_hash", "record_hash"], _STARTED_INDEX),
        ).fetchone()
        if found is not None and tuple(found) == (len(_TRIGGERS), 2, True):
            return  # complete: a role without DDL rights can use the store
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(_POSTGRES_SCHEMA)

    def _serialised(self, op: Callable[[_PostgresTx], T], what: str) -> T:
        def run(conn: _Conn) -> T:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CHAIN_LOCK,))
                return op(_PostgresTx(conn))

        with self._lock:
            return self._run(run, what)

    def append(self, record: AuditRecord) -> bool:
        """Append a record; False when its ``record_id`` is already stored."""
        stored = _checked(record)
        return self._serialised(lambda tx: _append_in(tx, stored), "write to")

    def claim(self, inp: ClaimChangeInput, *, bundle_hash: str = "") -> ClaimChangeResult:
        """Claim a change id for a run chain (see :func:`_claim_in`)."""
        return self._serialised(lambda tx: _claim_in(tx, inp, bundle_hash), "write to")

    def _read(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._run(lambda c: c.execute(sql, params).fetchall(), "read")

    def entries(self, query: AuditQuery) -> Entries:
        """The most recent ``query.limit`` records matching ``query``, oldest first."""
        where, params = _where(query, lambda n: f"%({n})s", lambda t: t)
        sql = (
            f"SELECT {_CHAIN_COLUMNS} FROM (SELECT {_CHAIN_COLUMNS} FROM {TABLE} {where} "
            "ORDER BY at DESC, seq DESC LIMIT %(limit)s) AS recent ORDER BY at, seq"
        )
        out = []
        for row in self._read(sql, params):
            data = dict(zip(_NAMES, row[1:13], strict=True))
            out.append(AuditEntry(row[0], AuditRecord.model_validate(data), row[13], row[14]))
        return out

    def list(self, query: AuditQuery) -> Records:
        """The most recent ``query.limit`` records (of one change, if given), oldest first."""
        return [e.record for e in self.entries(query)]

    def chain(self, *, batch: int = 5000) -> Iterator[ChainRow]:
        """Every stored row in storage order, content as stored."""
        after = -(2**63)
        sql = f"SELECT {_CHAIN_COLUMNS} FROM {TABLE} WHERE seq > %s ORDER BY seq LIMIT %s"
        while True:
            rows = self._read(sql, (after, batch))
            for row in rows:
                content = dict(zip(_NAMES, row[1:13], strict=True))
                content["at"] = iso(content["at"])
                content["expires_at"] = iso(content["expires_at"])
                if isinstance(content["detail"], dict):
                    content["detail"] = normalise_detail(content["detail"])
                yield ChainRow(row[0], content, str(row[13] or ""), str(row[14] or ""))
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def count(self) -> int:
        """How many records the table holds."""
        return int(self._read(f"SELECT count(*) FROM {TABLE}", ())[0][0])

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def open_audit_store(url: str) -> AuditStore:
    """Open the store an audit URL names: ``sqlite:///PATH`` or ``postgresql://...``.

    ``sqlite:///audit.db`` is relative to the working directory, ``sqlite:////var/lib/audit.db``
    absolute (as in SQLAlchemy); ``postgres://`` is accepted as libpq accepts it.

    Raises:
        AuditUrlError: the URL has another scheme.
        AuditStoreError: the store cannot be opened.
    """
    if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
        return SqliteAuditStore(url[len("sqlite:///") :])
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresAuditStore(url)
    shown = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)  # never print a password
    raise AuditUrlError(
        f"audit store URL {shown!r} is not supported; use sqlite:///PATH (e.g. "
        f"{DEFAULT_AUDIT_URL}) or postgresql://USER@HOST:PORT/DATABASE"
    )


@contextmanager
def opened(url: str) -> Iterator[AuditStore]:
    """Open the store an audit URL names, and close it afterwards."""
    store = open_audit_store(url)
    try:
        yield store
    finally:
        store.close()
