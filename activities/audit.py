"""The audit trail and the operator directory: what approvals are checked against and recorded in.

Temporal history has a retention period, so every approval, rejected approval, recheck, resume,
rollback and abort is also appended to an audit store (invariant I6): a SQLite file by default
(``sqlite:///PATH``), PostgreSQL in production (``postgresql://...``). The table is append-only at
the database level (triggers refuse UPDATE and DELETE), and writes are idempotent: ``record_id`` is
unique, so a retried or late ``record_audit`` attempt adds nothing.

The operator directory maps operators to groups. It is a YAML file (``yaml:PATH``) or a plug-in
(``plugin:NAME``, entry-point group ``changeguard.directories``), read again on every
``load_directory`` call, because membership changes while changes wait for approval.

Errors::

    Exception
    ├── AuditStoreError   the audit store cannot be opened, written or read
    │   └── AuditUrlError an audit URL has a scheme other than sqlite:/// or postgresql://
    └── DirectoryError    a directory spec is malformed, a file is missing or invalid, or a
                          plug-in is unknown; ``problems`` lists every problem found
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import psycopg
import structlog
import yaml
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic import ValidationError as PydanticValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from guardrails.plugins import PluginRegistry
from workflows import errors
from workflows.models import AuditQuery, AuditRecord, Directory, LoadDirectoryInput

log = structlog.get_logger(__name__)
T = TypeVar("T")

DEFAULT_AUDIT_URL = "sqlite:///.changeguard/audit.db"
DEFAULT_DIRECTORY = "yaml:.changeguard/operators.yaml"
DIRECTORY_GROUP = "changeguard.directories"
TABLE = "audit_records"

Records = list[AuditRecord]
"""A listing of audit records (an alias: the stores' ``list`` method shadows the builtin)."""

_COLUMNS = (
    "record_id, action, actor, at, change_id, run_id, guardrail, policy_hash, report_hash, "
    "reason, expires_at, detail"
)
_NAMES = [c.strip() for c in _COLUMNS.split(",")]


class AuditStoreError(Exception):
    """The audit store cannot be opened, written or read."""


class AuditUrlError(AuditStoreError):
    """An audit store URL names no supported store."""


class AuditStore(Protocol):
    """Where audit records go: append-only, idempotent by ``record_id``, blocking calls."""

    def append(self, record: AuditRecord) -> bool:
        """Append a record; False when one with its ``record_id`` exists (nothing is written)."""
        ...

    def list(self, query: AuditQuery) -> Records:
        """The most recent ``query.limit`` records (of one change, if given), oldest first."""
        ...

    def close(self) -> None:
        """Release the connection; safe to call twice."""
        ...


def _utc(value: datetime) -> datetime:
    """Aware UTC; a naive time is taken to be UTC already."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _record(row: dict[str, Any]) -> AuditRecord:
    return AuditRecord.model_validate(row)


# --------------------------------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------------------------------

_SQLITE_SCHEMA = f"""
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
    recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS {TABLE}_change_at ON {TABLE} (change_id, at, seq);
CREATE INDEX IF NOT EXISTS {TABLE}_at ON {TABLE} (at, seq);
CREATE TRIGGER IF NOT EXISTS {TABLE}_no_update BEFORE UPDATE ON {TABLE}
BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: UPDATE is refused'); END;
CREATE TRIGGER IF NOT EXISTS {TABLE}_no_delete BEFORE DELETE ON {TABLE}
BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only: DELETE is refused'); END;
"""


def _sqlite_time(value: datetime | None) -> str | None:
    """Fixed-width UTC text, so that text order is time order."""
    return None if value is None else _utc(value).isoformat(timespec="microseconds")


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
            # Autocommit: every INSERT is its own durable transaction.
            self._db = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise AuditStoreError(f"cannot open the audit database {self.path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # an audit record survives power loss
            self._db.executescript(_SQLITE_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise AuditStoreError(f"cannot open the audit database {self.path}: {exc}") from exc

    def append(self, record: AuditRecord) -> bool:
        """Append a record; False when its ``record_id`` is already stored."""
        data = record.model_dump(mode="json")
        data["at"] = _sqlite_time(record.at)
        data["expires_at"] = _sqlite_time(record.expires_at)
        data["detail"] = json.dumps(data["detail"], sort_keys=True)
        sql = (
            f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES ({', '.join(':' + n for n in _NAMES)}) "
            "ON CONFLICT(record_id) DO NOTHING"
        )
        try:
            with self._lock:
                return self._db.execute(sql, data).rowcount == 1
        except sqlite3.Error as exc:
            raise AuditStoreError(f"cannot write to the audit database {self.path}: {exc}") from exc

    def list(self, query: AuditQuery) -> Records:
        """The most recent ``query.limit`` records (of one change, if given), oldest first."""
        where = "WHERE change_id = :change_id" if query.change_id is not None else ""
        sql = (
            f"SELECT {_COLUMNS} FROM (SELECT seq, {_COLUMNS} FROM {TABLE} {where} "
            "ORDER BY at DESC, seq DESC LIMIT :limit) ORDER BY at, seq"
        )
        try:
            with self._lock:
                rows = self._db.execute(sql, query.model_dump()).fetchall()
        except sqlite3.Error as exc:
            raise AuditStoreError(f"cannot read the audit database {self.path}: {exc}") from exc
        out = []
        for row in rows:
            data = dict(zip(_NAMES, row, strict=True))
            data["detail"] = json.loads(data["detail"])
            out.append(_record(data))
        return out

    def close(self) -> None:
        """Close the database; safe to call twice."""
        with self._lock:
            self._db.close()


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------

_TRIGGERS = (f"{TABLE}_append_only", f"{TABLE}_no_truncate")
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
CREATE INDEX IF NOT EXISTS {TABLE}_change_at ON {TABLE} (change_id, at, seq);
CREATE INDEX IF NOT EXISTS {TABLE}_at ON {TABLE} (at, seq);
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


def _describe(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        p = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable DSN)"
    user = f"{p['user']}@" if p.get("user") else ""
    port = f":{p['port']}" if p.get("port") else ""
    return f"postgresql://{user}{p.get('host', '')}{port}/{p.get('dbname', '')}"


class PostgresAuditStore:
    """The production audit store: PostgreSQL through psycopg 3, one connection shared by threads.

    The schema is created on first use when missing. A deployment may instead create it as the
    table's owner and grant the worker's role only INSERT and SELECT: then nothing but the owner
    can even drop the triggers.

    Args:
        dsn: a libpq connection string or ``postgresql://`` URL.
        connect_timeout: seconds to wait for a connection (unless the DSN says otherwise).
    """

    def __init__(self, dsn: str, *, connect_timeout: int = 10) -> None:
        self.dsn = dsn
        self.where = _describe(dsn)
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        with self._lock:
            self._run(self._create_schema, "open")

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            params: dict[str, Any] = {
                "connect_timeout": self.connect_timeout,
                "application_name": "changeguard",
                **conninfo_to_dict(self.dsn),
            }
            self._conn = psycopg.connect(**params, autocommit=True)
            self._conn.execute("SET TIME ZONE 'UTC'")
        return self._conn

    def _run(self, op: Callable[[psycopg.Connection[tuple[Any, ...]]], T], what: str) -> T:
        """Run ``op(connection)``; a broken connection is dropped so the next call reconnects."""
        try:
            return op(self._connect())
        except psycopg.Error as exc:
            if self._conn is not None and (self._conn.broken or self._conn.closed):
                self._conn = None
            raise AuditStoreError(f"cannot {what} the audit database {self.where}: {exc}") from exc

    @staticmethod
    def _create_schema(conn: psycopg.Connection[tuple[Any, ...]]) -> None:
        found = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = ANY(%s)",
            (TABLE, list(_TRIGGERS)),
        ).fetchone()
        if found is not None and found[0] == len(_TRIGGERS):
            return  # in place: a role without DDL rights can use the store
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            conn.execute(_POSTGRES_SCHEMA)

    def append(self, record: AuditRecord) -> bool:
        """Append a record; False when its ``record_id`` is already stored."""
        data = record.model_dump(mode="json")
        data["at"] = _utc(record.at)
        data["expires_at"] = None if record.expires_at is None else _utc(record.expires_at)
        data["detail"] = Jsonb(data["detail"])
        sql = (
            f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES ({', '.join(f'%({n})s' for n in _NAMES)}) "
            "ON CONFLICT (record_id) DO NOTHING"
        )
        with self._lock:
            return self._run(lambda c: c.execute(sql, data).rowcount == 1, "write to")

    def list(self, query: AuditQuery) -> Records:
        """The most recent ``query.limit`` records (of one change, if given), oldest first."""
        where = "WHERE change_id = %(change_id)s" if query.change_id is not None else ""
        sql = (
            f"SELECT {_COLUMNS} FROM (SELECT seq, {_COLUMNS} FROM {TABLE} {where} "
            "ORDER BY at DESC, seq DESC LIMIT %(limit)s) AS recent ORDER BY at, seq"
        )
        with self._lock:
            rows = self._run(lambda c: c.execute(sql, query.model_dump()).fetchall(), "read")
        return [_record(dict(zip(_NAMES, row, strict=True))) for row in rows]

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


# --------------------------------------------------------------------------------------------------
# The operator directory
# --------------------------------------------------------------------------------------------------


class DirectoryError(Exception):
    """A directory spec, file or plug-in is unusable; ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], *, source: str) -> None:
        self.problems = list(problems)
        self.source = source
        count = f"{len(self.problems)} problem" + ("s" if len(self.problems) != 1 else "")
        super().__init__(
            f"operator directory {source} is unusable ({count}):\n"
            + "\n".join(f"  - {p}" for p in self.problems)
        )


class DirectorySource(Protocol):
    """Where the operator directory comes from; plug-ins implement this (and are built bare)."""

    name: str

    async def load(self) -> Directory:
        """Read the directory as it is now."""
        ...


_Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _no_groups(value: Any) -> Any:
    return [] if value is None else value  # "carol:" with nothing after it: no groups


class _DirectoryFile(BaseModel):
    """The YAML file: ``operators: {alice: [web-team], bob: [sre-leads, release-managers]}``."""

    model_config = ConfigDict(extra="forbid")

    operators: dict[_Name, Annotated[list[_Name], BeforeValidator(_no_groups)]] = Field(
        default_factory=dict
    )


class YamlDirectory:
    """The operator directory kept in a YAML file, read again on every :meth:`load`.

    Args:
        path: the file (relative paths are relative to the working directory).
        missing_ok: a missing file is an empty directory rather than an error.
    """

    name = "yaml"

    def __init__(self, path: str | Path, *, missing_ok: bool = False) -> None:
        self.path = Path(path)
        self.missing_ok = missing_ok

    async def load(self) -> Directory:
        """Read and validate the file (in a thread)."""
        return await asyncio.to_thread(self.read)

    def read(self) -> Directory:
        """Read and validate the file.

        Raises:
            DirectoryError: the file is missing (unless ``missing_ok``), unreadable or invalid;
                each problem is located (``operators.bob.1: ...``) and the message names the file.
        """
        label = str(self.path)
        source = f"yaml:{label}"
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if self.missing_ok:
                return Directory(source=source)
            raise DirectoryError([f"{label}: no such file"], source=label) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DirectoryError([f"{label}: cannot read: {exc}"], source=label) from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark is not None else label
            problem = getattr(exc, "problem", None) or str(exc)
            raise DirectoryError([f"{where}: invalid YAML: {problem}"], source=label) from None
        if raw is not None and not isinstance(raw, dict):
            raise DirectoryError(
                [
                    f"{label}: expected a mapping such as 'operators: {{alice: [web-team]}}', "
                    f"not a {type(raw).__name__}"
                ],
                source=label,
            )
        try:
            parsed = _DirectoryFile.model_validate(raw or {})
        except PydanticValidationError as exc:
            raise DirectoryError(
                [f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors()], source=label
            ) from None
        operators = {name: list(dict.fromkeys(groups)) for name, groups in parsed.operators.items()}
        return Directory(operators=operators, source=source)


def _where(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as written in YAML: ``operators.bob[1]``, ``operators.'' (name)``."""
    parts: list[str] = []
    for part in loc:
        if part == "[key]" and parts:
            parts[-1] += " (name)"
        elif isinstance(part, int) and parts:
            parts[-1] += f"[{part}]"
        else:
            text = str(part)
            parts.append(text if text.strip() and text.isprintable() else repr(text))
    return ".".join(parts)


def _validate_directory(cls: type[DirectorySource]) -> list[str]:
    if not isinstance(cls, type):
        return ["it must be a class"]
    if not inspect.iscoroutinefunction(getattr(cls, "load", None)):
        return ["it must define 'async def load(self) -> Directory'"]
    return []


def new_directory_registry() -> PluginRegistry[DirectorySource]:
    """An empty registry of directory plug-ins (tests use their own)."""
    return PluginRegistry(
        kind="operator directory", group=DIRECTORY_GROUP, validate=_validate_directory
    )


def default_directory_registry() -> PluginRegistry[DirectorySource]:
    """A registry with every directory plug-in advertised through entry points."""
    registry = new_directory_registry()
    registry.load_entry_points()
    return registry


def open_directory(
    spec: str = DEFAULT_DIRECTORY, *, registry: PluginRegistry[DirectorySource] | None = None
) -> DirectorySource:
    """The directory a spec names: ``yaml:PATH`` or ``plugin:NAME``.

    Only the default file (:data:`DEFAULT_DIRECTORY`) may be missing (an empty directory: nobody
    may approve); a file named explicitly must exist.

    Args:
        spec: the directory spec.
        registry: where ``plugin:NAME`` is looked up (default: the entry points).

    Raises:
        DirectoryError: the spec has another form, or no plug-in has that name.
    """
    kind, _, rest = spec.partition(":")
    if kind == "yaml" and rest:
        return YamlDirectory(rest, missing_ok=spec == DEFAULT_DIRECTORY)
    if kind == "plugin" and rest:
        plugins = registry if registry is not None else default_directory_registry()
        try:
            return plugins.get(rest)
        except KeyError as exc:
            raise DirectoryError([str(exc.args[0])], source=spec) from None
    raise DirectoryError(
        [
            f"{spec!r} is not a directory spec; use 'yaml:PATH' (e.g. {DEFAULT_DIRECTORY!r}) or "
            f"'plugin:NAME' (a plug-in registered under the entry-point group {DIRECTORY_GROUP!r})"
        ],
        source=spec,
    )


# --------------------------------------------------------------------------------------------------
# Activities
# --------------------------------------------------------------------------------------------------


class AuditActivities:
    """Audit and directory activities, bound to a store and a directory.

    Args:
        store: where audit records are appended (the worker closes it when it stops).
        directory_spec: ``yaml:PATH`` or ``plugin:NAME``; checked now, so a bad one stops the worker.
        directories: where ``plugin:NAME`` is looked up (default: the entry points).

    Raises:
        DirectoryError: the spec is malformed or names an unknown plug-in.
    """

    def __init__(
        self,
        store: AuditStore,
        directory_spec: str = DEFAULT_DIRECTORY,
        *,
        directories: PluginRegistry[DirectorySource] | None = None,
    ) -> None:
        self.store = store
        self.directory_spec = directory_spec
        self.directory = open_directory(directory_spec, registry=directories)

    @activity.defn(name="record_audit")
    async def record_audit(self, record: AuditRecord) -> bool:
        """Append an audit record; idempotent: False when this ``record_id`` was written before."""
        inserted = await asyncio.to_thread(self.store.append, record)
        log.info(
            "audit record written" if inserted else "audit record already present",
            record_id=record.record_id,
            action=record.action.value,
            change_id=record.change_id,
        )
        return inserted

    @activity.defn(name="load_directory")
    async def load_directory(self, inp: LoadDirectoryInput) -> Directory:
        """Read the operator directory as it is now (an invalid one is a non-retryable error)."""
        try:
            directory = await self.directory.load()
        except DirectoryError as exc:
            raise ApplicationError(
                str(exc), exc.problems, type=errors.INVALID_INPUT, non_retryable=True
            ) from exc
        if not isinstance(directory, Directory):
            raise ApplicationError(
                f"operator directory {self.directory_spec} returned "
                f"{type(directory).__name__}, not Directory",
                type=errors.CONTRACT_VIOLATION,
                non_retryable=True,
            )
        if not directory.source:
            directory.source = self.directory_spec
        return directory
