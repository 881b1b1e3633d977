"""The default audit store: one SQLite file in WAL mode (``sqlite:///PATH``).

Append-only at the database level: triggers refuse UPDATE and DELETE, and an INSERT over an
existing record (``REPLACE INTO``, upserts). Appends are serialised with ``BEGIN IMMEDIATE``, so
the workers sharing a file keep one chain. A store from before the chain gains its hash columns
when opened.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

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
        names = INSERTED
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
        stored = checked(record)
        return self._serialised(lambda tx: append_in(tx, stored), "write to")

    def append_many(self, records: Sequence[AuditRecord]) -> list[bool]:
        """Append records in order in one transaction; False for each ``record_id`` stored."""
        stored = [checked(r) for r in records]
        return self._serialised(lambda tx: append_all_in(tx, stored), "write to")

    def claim(self, inp: ClaimChangeInput, *, bundle_hash: str = "") -> ClaimChangeResult:
        """Claim a change id for a run chain (see :func:`_claim_in`)."""
        return self._serialised(lambda tx: claim_in(tx, inp, bundle_hash), "write to")

    def _read(self, sql: str, params: dict[str, Any] | tuple[Any, ...]) -> list[Any]:
        try:
            with self._lock:
                return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _sqlite_error(self.path, "read", exc) from exc

    def entries(self, query: AuditQuery) -> Entries:
        """The most recent ``query.limit`` records matching ``query``, oldest first."""
        return read_entries(self._read, query, lambda n: f":{n}", iso, json.loads)

    def list(self, query: AuditQuery) -> Records:
        """The most recent ``query.limit`` records (of one change, if given), oldest first."""
        return [e.record for e in self.entries(query)]

    def chain(self, *, batch: int = 5000) -> Iterator[ChainRow]:
        """Every stored row in storage order, content as stored (unparsable detail kept as text)."""
        return read_chain(self._read, "?", batch, _as_stored)

    def count(self) -> int:
        """How many records the file holds."""
        return int(self._read(f"SELECT count(*) FROM {TABLE}", ())[0][0])

    def close(self) -> None:
        """Close the database; safe to call twice."""
        with self._lock:
            self._db.close()


def _as_stored(content: dict[str, Any]) -> None:
    # Detail that is not a JSON object (tampered) stays text: its hash will not match.
    with suppress(TypeError, ValueError, AssertionError):
        content["detail"] = normalise_detail(json.loads(content["detail"]))
