"""The audit trail's hash chain and the bounds every record keeps: pure code, no database.

Each record stored carries ``prev_hash`` (the hash of the record stored before it, ``""`` for the
first) and ``record_hash``: the SHA-256 of a canonical encoding of its content and ``prev_hash``
(:func:`chain_hash`). Appends are serialised per store, so the records form one chain in storage
order; rewriting, removing, inserting or reordering any record breaks it where it happened, and
:func:`verify_chain` names the first record that does not fit. What the chain cannot show alone is
the removal of the newest records, or a chain rewritten from some point on by someone who can
write the store: note the head (``changeguard audit verify`` prints it) somewhere else, and check
it later with ``--head``.

The canonical encoding is JSON with sorted keys and no spaces, over the record's fields with times
in UTC (microseconds) and the detail normalised to what every store gives back (see
:func:`normalise_detail`), so the hash a worker computed is the hash ``verify`` recomputes from
either store.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from workflows.models import AuditRecord

CHAIN_VERSION = 1
SHORT_MAX = 1024
"""Longest ``record_id``, ``actor``, ``change_id``, ``run_id``, ``guardrail`` and hashes (chars)."""
REASON_MAX_BYTES = 8 * 1024
"""Longest ``reason`` (UTF-8 bytes)."""
DETAIL_MAX_BYTES = 64 * 1024
"""Longest ``detail`` as JSON (UTF-8 bytes)."""
DETAIL_MAX_DEPTH = 32
_SHORT_FIELDS = (
    "record_id",
    "actor",
    "change_id",
    "run_id",
    "guardrail",
    "policy_hash",
    "report_hash",
)
CONTENT_FIELDS = (
    "record_id",
    "action",
    "actor",
    "at",
    "change_id",
    "run_id",
    "guardrail",
    "policy_hash",
    "report_hash",
    "reason",
    "expires_at",
    "detail",
)
"""The fields a record's hash covers (every field of :class:`AuditRecord`)."""


class RecordInvalid(ValueError):
    """A record breaks the bounds every store keeps; ``problems`` says which and why."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("audit record refused: " + "; ".join(self.problems))


def iso(value: datetime | None) -> str | None:
    """A time as fixed-width UTC text (a naive time is taken to be UTC already)."""
    if value is None:
        return None
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat(timespec="microseconds")


def _normal(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _normal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normal(v) for v in value]
    if isinstance(value, float):
        if value == 0.0:
            return 0.0  # PostgreSQL's numeric has no negative zero
        if value.is_integer() and abs(value) >= 1e16:
            # JSONB keeps numbers as decimals and gives 1e+20 back as 100000000000000000000.
            return int(Decimal(repr(value)))
    return value


def normalise_detail(detail: dict[str, Any]) -> dict[str, Any]:
    """The detail as every store gives it back (integral floats beyond 1e16 become integers)."""
    out = _normal(detail)
    assert isinstance(out, dict)
    return out


def content_of(record: AuditRecord) -> dict[str, Any]:
    """The content a record's hash covers, as plain JSON values."""
    data = record.model_dump(mode="json")
    data["action"] = record.action.value
    data["at"] = iso(record.at)
    data["expires_at"] = iso(record.expires_at)
    data["detail"] = normalise_detail(record.detail)
    return {k: data[k] for k in CONTENT_FIELDS}


def chain_hash(content: dict[str, Any], prev_hash: str) -> str:
    """SHA-256 (hex) of the canonical encoding of a record's content and its predecessor's hash."""
    canonical = json.dumps(
        {"v": CHAIN_VERSION, "prev": prev_hash, "record": content},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


# --------------------------------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------------------------------


def _text_problem(name: str, value: str) -> str | None:
    if "\x00" in value:
        return f"{name} contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} is not valid Unicode (a lone surrogate)"
    return None


def _walk(name: str, value: Any, depth: int, out: list[str]) -> None:
    if len(out) >= 10:
        return
    if depth > DETAIL_MAX_DEPTH:
        out.append(f"{name} is nested deeper than {DETAIL_MAX_DEPTH} levels")
    elif isinstance(value, str):
        problem = _text_problem(name, value)
        if problem:
            out.append(problem)
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                out.append(f"{name} has a key that is not a string ({type(k).__name__})")
                continue
            problem = _text_problem(f"{name} key {k[:40]!r}", k)
            if problem:
                out.append(problem)
            _walk(f"{name}.{k[:40]}", v, depth + 1, out)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _walk(f"{name}[{i}]", v, depth + 1, out)
    elif isinstance(value, float) and not math.isfinite(value):
        out.append(f"{name} is not a finite number")
    elif value is not None and not isinstance(value, bool | int | float):
        out.append(f"{name} is a {type(value).__name__}, not a JSON value")


def check_record(record: AuditRecord) -> None:
    """Refuse a record no store could keep as it is (retrying it could never help).

    Raises:
        RecordInvalid: a field holds NUL or invalid Unicode, or is over its bound
            (:data:`SHORT_MAX`, :data:`REASON_MAX_BYTES`, :data:`DETAIL_MAX_BYTES`), or the detail
            is not plain JSON, or a time is out of range.
    """
    problems: list[str] = []
    for name in _SHORT_FIELDS:
        value = getattr(record, name)
        problem = _text_problem(name, value)
        if problem:
            problems.append(problem)
        elif len(value) > SHORT_MAX:
            problems.append(f"{name} is {len(value):,} characters long (at most {SHORT_MAX:,})")
    problem = _text_problem("reason", record.reason)
    if problem:
        problems.append(problem)
    elif len(record.reason.encode()) > REASON_MAX_BYTES:
        problems.append(
            f"reason is {len(record.reason.encode()):,} bytes long (at most {REASON_MAX_BYTES:,})"
        )
    for name in ("at", "expires_at"):
        try:
            iso(getattr(record, name))
        except (OverflowError, ValueError):
            problems.append(f"{name} is out of range")
    detail_problems: list[str] = []
    _walk("detail", record.detail, 1, detail_problems)
    problems += detail_problems
    if not detail_problems:
        size = len(json.dumps(record.detail, ensure_ascii=False, allow_nan=False).encode())
        if size > DETAIL_MAX_BYTES:
            problems.append(f"detail is {size:,} bytes long as JSON (at most {DETAIL_MAX_BYTES:,})")
    if problems:
        raise RecordInvalid(problems)


# --------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainRow:
    """One stored row as the store holds it: storage order, raw content, the two hashes."""

    seq: int
    content: dict[str, Any]
    prev_hash: str
    record_hash: str


@dataclass(frozen=True)
class ChainBreak:
    """A record that does not fit the chain, and why."""

    seq: int
    record_id: str
    problem: str


@dataclass
class ChainReport:
    """What :func:`verify_chain` found."""

    checked: int = 0
    unchained: int = 0
    """Records from before the store kept a chain (a store upgraded in place), at its start."""
    head_hash: str = ""
    head_seq: int = 0
    head_found: bool | None = None
    breaks: list[ChainBreak] = field(default_factory=list)
    more_breaks: int = 0

    @property
    def intact(self) -> bool:
        """Whether every record fits and the noted head (if any) is in the chain."""
        return not self.breaks and self.head_found is not False

    def as_json(self) -> dict[str, Any]:
        """A JSON document for ``changeguard audit verify --json``."""
        return {
            "intact": self.intact,
            "checked": self.checked,
            "unchained": self.unchained,
            "head": {"record_hash": self.head_hash, "seq": self.head_seq},
            "head_found": self.head_found,
            "breaks": [b.__dict__ for b in self.breaks],
            "more_breaks": self.more_breaks,
        }


MAX_BREAKS = 20


def verify_chain(
    rows: Iterable[ChainRow],
    *,
    expect_head: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ChainReport:
    """Walk rows in storage order and check every hash and every link.

    After a break the walk goes on from the stored hash, so one rewritten record is one break, and
    later damage is still found. The first break is the first record that does not fit.

    Args:
        rows: the store's rows, oldest first (storage order).
        expect_head: a ``record_hash`` noted earlier; the chain must still contain it.
        progress: called with the count checked so far, every 10,000 records.
    """
    report = ChainReport(head_found=None if expect_head is None else False)
    prev_hash = ""
    prev: ChainRow | None = None

    def broken(row: ChainRow, problem: str) -> None:
        if len(report.breaks) < MAX_BREAKS:
            record_id = str(row.content.get("record_id", ""))[:200]
            report.breaks.append(ChainBreak(row.seq, record_id, problem))
        else:
            report.more_breaks += 1

    for row in rows:
        report.checked += 1
        name = f"record {str(row.content.get('record_id', ''))[:200]!r} (#{row.seq})"
        if not row.record_hash:
            if prev is None or (report.unchained and not prev_hash):
                report.unchained += 1  # from before the chain began
            else:
                broken(row, f"{name} has no hash: it was written outside changeguard's store")
            prev = row
            continue
        try:
            recomputed = chain_hash(row.content, row.prev_hash)
        except (TypeError, ValueError):
            recomputed = ""
        if recomputed != row.record_hash:
            broken(
                row,
                f"{name} does not match its hash: its content or its hash was changed after it "
                "was written",
            )
        elif row.prev_hash != prev_hash:
            if prev is None or (not prev_hash and report.unchained):
                broken(
                    row,
                    f"{name} is the first record of the chain but follows another: the records "
                    "before it were removed",
                )
            else:
                prev_name = f"{str(prev.content.get('record_id', ''))[:200]!r} (#{prev.seq})"
                broken(
                    row,
                    f"{name} does not follow record {prev_name}: a record between them was "
                    "removed, or records were reordered or inserted",
                )
        if expect_head is not None and row.record_hash == expect_head:
            report.head_found = True
        prev_hash = row.record_hash
        prev = row
        report.head_hash, report.head_seq = row.record_hash, row.seq
        if progress is not None and report.checked % 10_000 == 0:
            progress(report.checked)
    return report
