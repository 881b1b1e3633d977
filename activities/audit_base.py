"""What every audit store shares: its errors, its interface, and one append or claim in a transaction.

The stores themselves are :mod:`activities.audit_sqlite` and :mod:`activities.audit_postgres`;
:mod:`activities.audit_store` opens the one an audit URL names. A store implements :class:`Tx` for
its database; :func:`append_in` and :func:`claim_in` hold the rules (idempotent by ``record_id``,
one ``started`` record per change, each row chained to the last), so both databases keep them alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from activities.audit_chain import (
    ChainRow,
    RecordInvalid,
    chain_hash,
    check_record,
    content_of,
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

COLUMNS = (
    "record_id, action, actor, at, change_id, run_id, guardrail, policy_hash, report_hash, "
    "reason, expires_at, detail"
)
NAMES = [c.strip() for c in COLUMNS.split(",")]
CHAIN_COLUMNS = f"seq, {COLUMNS}, prev_hash, record_hash"
INSERTED = [*NAMES, "prev_hash", "record_hash"]
"""The columns an append writes."""


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

    def append_many(self, records: Sequence[AuditRecord]) -> list[bool]:
        """Append records in order in one transaction (all or none); per record as :meth:`append`.

        For a chunk's effect records (``apply_change_many``): one commit, where one per record
        cost a round trip and a commit each (``bench/ledger.py``).
        """
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


def started_record(inp: ClaimChangeInput, bundle_hash: str) -> AuditRecord:
    """The ``started`` record that claims ``inp.change_id`` for its run chain."""
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


def checked(record: AuditRecord) -> AuditRecord:
    """The record as it will be stored (detail normalised), or :class:`AuditRecordInvalid`."""
    try:
        check_record(record)
    except RecordInvalid as exc:
        raise AuditRecordInvalid(exc.problems) from None
    return record.model_copy(update={"detail": normalise_detail(record.detail)})


class Tx(Protocol):
    """What one serialised append transaction can do, per database."""

    def exists(self, record_id: str) -> bool:
        """Whether a record with this ``record_id`` is stored."""
        ...

    def started(self, change_id: str) -> tuple[str, datetime] | None:
        """The run id and time of the change's ``started`` record, if any."""
        ...

    def last_hash(self) -> str:
        """The ``record_hash`` of the last stored row (``""`` for an empty store)."""
        ...

    def insert(self, record: AuditRecord, prev_hash: str, record_hash: str) -> None:
        """Insert a checked record with its place in the chain."""
        ...


def append_in(tx: Tx, record: AuditRecord) -> bool:
    """Append a checked record, chained to the last; False when its ``record_id`` is stored."""
    return append_all_in(tx, [record])[0]


def append_all_in(tx: Tx, records: Sequence[AuditRecord]) -> list[bool]:
    """:func:`append_in` for each checked record, in order, in the caller's one transaction.

    The chain's last hash is read once: the transaction is serialised (each store holds its lock
    for the whole of it), so nothing else can append in between, and each record chains to the
    one inserted before it.
    """
    written: list[bool] = []
    prev = tx.last_hash() if records else ""
    for record in records:
        if tx.exists(record.record_id):
            written.append(False)
            continue
        record_hash = chain_hash(content_of(record), prev)
        tx.insert(record, prev, record_hash)
        prev = record_hash
        written.append(True)
    return written


def claim_in(tx: Tx, inp: ClaimChangeInput, bundle_hash: str) -> ClaimChangeResult:
    """Write the change's ``started`` record unless its id is claimed; who holds the id."""
    held = tx.started(inp.change_id)
    if held is not None:
        run_id, at = held
        return ClaimChangeResult(
            claimed=run_id == inp.run_id, run_id=run_id, at=at, bundle_hash=bundle_hash
        )
    record = checked(started_record(inp, bundle_hash))
    append_in(tx, record)
    return ClaimChangeResult(claimed=True, run_id=inp.run_id, at=inp.at, bundle_hash=bundle_hash)


def where_clause(
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


Read = Callable[[str, Any], list[Any]]
"""A store's read: SQL and its parameters to the rows (under the store's lock, errors wrapped)."""


def read_entries(
    read: Read,
    query: AuditQuery,
    param: Callable[[str], str],
    at: Callable[[datetime], Any],
    detail: Callable[[Any], Any] = lambda stored: stored,
) -> Entries:
    """The most recent ``query.limit`` records matching ``query``, oldest first.

    Args:
        read: the store's read.
        query: which records.
        param: spells a named placeholder (see :func:`where_clause`).
        at: a time as the database compares it.
        detail: the stored ``detail`` column as a dict (SQLite keeps JSON text).
    """
    where, params = where_clause(query, param, at)
    sql = (
        f"SELECT {CHAIN_COLUMNS} FROM (SELECT {CHAIN_COLUMNS} FROM {TABLE} {where} "
        f"ORDER BY at DESC, seq DESC LIMIT {param('limit')}) AS recent ORDER BY at, seq"
    )
    out = []
    for row in read(sql, params):
        data = dict(zip(NAMES, row[1:13], strict=True))
        data["detail"] = detail(data["detail"])
        out.append(AuditEntry(row[0], AuditRecord.model_validate(data), row[13], row[14]))
    return out


def read_chain(
    read: Read, placeholder: str, batch: int, as_stored: Callable[[dict[str, Any]], None]
) -> Iterator[ChainRow]:
    """Every stored row in storage order, ``batch`` rows a read.

    Args:
        read: the store's read.
        placeholder: the database's positional placeholder (``?``, ``%s``).
        batch: rows a read.
        as_stored: turns a row's columns, in place, into the content its hash was computed over.
    """
    after = -(2**63)
    sql = (
        f"SELECT {CHAIN_COLUMNS} FROM {TABLE} WHERE seq > {placeholder} ORDER BY seq "
        f"LIMIT {placeholder}"
    )
    while True:
        rows = read(sql, (after, batch))
        for row in rows:
            content = dict(zip(NAMES, row[1:13], strict=True))
            as_stored(content)
            yield ChainRow(row[0], content, str(row[13] or ""), str(row[14] or ""))
        if len(rows) < batch:
            return
        after = rows[-1][0]
