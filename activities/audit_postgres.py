"""The production audit store: PostgreSQL through psycopg 3 (``postgresql://...``).

Append-only at the database level: triggers refuse UPDATE, DELETE and TRUNCATE. Appends are
serialised by a transaction-scoped advisory lock, so concurrent workers keep one chain. The schema's
DDL is :func:`postgres_schema` (``infra/postgres/audit-schema.sql`` holds it verbatim, for the
table's owner to run).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from activities.audit_base import (
    INSERTED,
    STARTED,
    TABLE,
    AuditStoreError,
    Entries,
    Records,
    T,
    append_all_in,
    append_in,
    checked,
    claim_in,
    read_chain,
    read_entries,
)
from activities.audit_chain import ChainRow, content_of, iso, normalise_detail
from workflows.models import AuditQuery, AuditRecord, ClaimChangeInput, ClaimChangeResult

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
        names = INSERTED
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
        stored = checked(record)
        return self._serialised(lambda tx: append_in(tx, stored), "write to")

    def append_many(self, records: Sequence[AuditRecord]) -> list[bool]:
        """Append records in order in one transaction; False for each ``record_id`` stored."""
        stored = [checked(r) for r in records]
        return self._serialised(lambda tx: append_all_in(tx, stored), "write to")

    def claim(self, inp: ClaimChangeInput, *, bundle_hash: str = "") -> ClaimChangeResult:
        """Claim a change id for a run chain (see :func:`_claim_in`)."""
        return self._serialised(lambda tx: claim_in(tx, inp, bundle_hash), "write to")

    def _read(self, sql: str, params: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._run(lambda c: c.execute(sql, params).fetchall(), "read")

    def entries(self, query: AuditQuery) -> Entries:
        """The most recent ``query.limit`` records matching ``query``, oldest first."""
        return read_entries(self._read, query, lambda n: f"%({n})s", lambda t: t)

    def list(self, query: AuditQuery) -> Records:
        """The most recent ``query.limit`` records (of one change, if given), oldest first."""
        return [e.record for e in self.entries(query)]

    def chain(self, *, batch: int = 5000) -> Iterator[ChainRow]:
        """Every stored row in storage order, content as stored."""
        return read_chain(self._read, "%s", batch, _as_stored)

    def count(self) -> int:
        """How many records the table holds."""
        return int(self._read(f"SELECT count(*) FROM {TABLE}", ())[0][0])

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _as_stored(content: dict[str, Any]) -> None:
    content["at"] = iso(content["at"])
    content["expires_at"] = iso(content["expires_at"])
    if isinstance(content["detail"], dict):
        content["detail"] = normalise_detail(content["detail"])
