"""Bench: effect records written one transaction each against one transaction per chunk.

Usage::

    .venv/bin/python bench/ledger.py [--records N] [--chunk K] [--repeats R] [--no-postgres]

An ``apply_change_many`` chunk of K targets writes K effect records (``effect:<key>``, one per
target, each chained to the last). They used to be K appends, each its own transaction: with the
SQLite store (``synchronous=FULL``) one fsync each, with PostgreSQL one round trip and one commit
each. ``AuditStore.append_many`` writes a chunk's records in one transaction. This bench writes N
records both ways into a fresh store of each kind, R times interleaved, and prints records/s and
the ratio ``per_record / per_chunk`` (seconds; above 1: the chunk is faster).

The PostgreSQL cluster is a fresh ``initdb`` on loopback (``tests/servers.py``) with ``fsync`` on,
as in production (the test suite's cluster runs with ``fsync=off``). The last lines are
``sqlite_per_record_vs_chunk=<x>`` and ``postgres_per_record_vs_chunk=<x>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from activities.audit_base import AuditStore  # noqa: E402
from workflows.models import AuditAction, AuditRecord  # noqa: E402


def records(n: int) -> list[AuditRecord]:
    """``n`` effect records shaped as ``activities.effects`` writes them."""
    change = f"bench-ledger-{uuid.uuid4().hex[:8]}"
    at = datetime.now(UTC)
    out = []
    for i in range(n):
        key = f"{change}:apply:web-{i:05d}"
        out.append(
            AuditRecord(
                record_id=f"effect:{key}",
                action=AuditAction.MUTATION,
                actor="changeguard",
                at=at,
                change_id=change,
                run_id="bench-run",
                reason="deployed 9.1.0",
                detail={
                    "target": f"web-{i:05d}",
                    "idempotency_key": key,
                    "applied_key": "",
                    "by_earlier_attempt": False,
                    "before": {"version": "9.0.0"},
                    "after": {"version": "9.1.0"},
                },
            )
        )
    return out


def per_record(store: AuditStore, batch: list[AuditRecord], chunk: int) -> None:
    """One transaction per record (what a chunk did before ``append_many``)."""
    del chunk
    for record in batch:
        store.append(record)


def per_chunk(store: AuditStore, batch: list[AuditRecord], chunk: int) -> None:
    """One transaction per chunk of ``chunk`` records."""
    for i in range(0, len(batch), chunk):
        store.append_many(batch[i : i + chunk])


def measure(
    open_store: Callable[[], AuditStore], args: argparse.Namespace, label: str
) -> dict[str, list[float]]:
    """R interleaved runs of both ways, each into the same store; seconds per run."""
    times: dict[str, list[float]] = {"per_record": [], "per_chunk": []}
    store = open_store()
    try:
        per_chunk(store, records(args.chunk), args.chunk)  # warm-up: schema, caches, connection
        for r in range(1, args.repeats + 1):
            for name, way in (("per_record", per_record), ("per_chunk", per_chunk)):
                batch = records(args.records)
                t0 = time.perf_counter()
                way(store, batch, args.chunk)
                took = time.perf_counter() - t0
                times[name].append(took)
                print(
                    f"  {label} repeat {r}/{args.repeats} {name:<10} {took:7.3f} s "
                    f"({args.records / took:8.0f} records/s)",
                    flush=True,
                )
        expected = args.chunk + 2 * args.repeats * args.records
        if store.count() != expected:
            raise RuntimeError(f"{label}: {store.count()} records stored, {expected} written")
        report = store_chain_ok(store)
        if not report:
            raise RuntimeError(f"{label}: the hash chain does not verify")
    finally:
        store.close()
    return times


def store_chain_ok(store: AuditStore) -> bool:
    """Whether the store's hash chain verifies end to end."""
    from activities.audit_chain import verify_chain

    return verify_chain(store.chain()).intact


def main() -> int:
    """Run the bench; the last lines are the ratios."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--records", type=int, default=2000, metavar="N", help="default 2000")
    p.add_argument("--chunk", type=int, default=25, metavar="K", help="default 25 (http-deploy)")
    p.add_argument("--repeats", type=int, default=3, metavar="R", help="default 3")
    p.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = p.parse_args()
    if args.records < 1 or args.chunk < 1 or args.repeats < 1:
        p.error("--records, --chunk and --repeats must be >= 1")

    from activities.audit_sqlite import SqliteAuditStore

    ratios: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        print(f"Ledger bench: {args.records} records, chunks of {args.chunk}, R={args.repeats}")
        sqlite = measure(lambda: SqliteAuditStore(Path(tmp) / "audit.db"), args, "sqlite")
        ratios["sqlite"] = statistics.median(sqlite["per_record"]) / statistics.median(
            sqlite["per_chunk"]
        )
        if not args.no_postgres:
            from activities.audit_postgres import PostgresAuditStore
            from tests.servers import PostgresServer

            server = PostgresServer(Path(tmp) / "pg", fsync=True).start()
            try:
                dsn = server.create_database("bench_ledger")
                pg = measure(lambda: PostgresAuditStore(dsn), args, "postgres")
            finally:
                server.stop()
            ratios["postgres"] = statistics.median(pg["per_record"]) / statistics.median(
                pg["per_chunk"]
            )
    print()
    for name, ratio in ratios.items():
        print(f"{name}_per_record_vs_chunk={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
