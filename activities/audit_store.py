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

The stores are :mod:`activities.audit_sqlite` and :mod:`activities.audit_postgres`, over what they
share (:mod:`activities.audit_base`: the errors, the interface, one append or claim); this module
opens the one a URL names and re-exports every name it has held.

Errors::

    Exception
    └── AuditStoreError       the audit store cannot be opened, written or read (``retryable``)
        ├── AuditUrlError     an audit URL has a scheme other than sqlite:/// or postgresql://
        └── AuditRecordInvalid a record no store can keep (NUL, over-long, not JSON): never retry
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from activities.audit_base import (
    DEFAULT_AUDIT_URL,
    STARTED,
    TABLE,
    AuditEntry,
    AuditRecordInvalid,
    AuditStore,
    AuditStoreError,
    AuditUrlError,
    Entries,
    Records,
)
from activities.audit_postgres import SCHEMA_FILE, PostgresAuditStore, postgres_schema
from activities.audit_sqlite import SqliteAuditStore

__all__ = [
    "DEFAULT_AUDIT_URL",
    "SCHEMA_FILE",
    "STARTED",
    "TABLE",
    "AuditEntry",
    "AuditRecordInvalid",
    "AuditStore",
    "AuditStoreError",
    "AuditUrlError",
    "Entries",
    "PostgresAuditStore",
    "Records",
    "SqliteAuditStore",
    "open_audit_store",
    "opened",
    "postgres_schema",
]


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
