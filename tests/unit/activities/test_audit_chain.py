"""The audit trail's hash chain, the change-id claim, bounded records and ``audit verify`` (SQLite).

Tampering is simulated the way an attacker with write access to the file would do it: a raw
``sqlite3`` connection that drops the triggers first. The PostgreSQL side is in
``tests/integration/test_audit_postgres.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.audit import (
    DEFAULT_DIRECTORY,
    AuditActivities,
    AuditStore,
    AuditStoreError,
    SqliteAuditStore,
)
from activities.audit_chain import ChainReport, chain_hash, content_of, verify_chain
from cli.audit import add_parser, cmd_audit, cmd_verify
from worker.settings import Settings
from workflows import errors
from workflows.models import AuditAction, AuditQuery, AuditRecord, ClaimChangeInput

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
TRIGGERS = ("audit_records_no_update", "audit_records_no_delete", "audit_records_no_replace")


def record(record_id: str, *, minutes: int = 0, **fields: Any) -> AuditRecord:
    """A record of chg-1 at ``T0 + minutes``."""
    values: dict[str, Any] = {
        "record_id": record_id,
        "action": AuditAction.RECHECK,
        "actor": "bob",
        "at": T0 + timedelta(minutes=minutes),
        "change_id": "chg-1",
        "run_id": "run-1",
        "reason": "recheck after the fix",
    }
    values.update(fields)
    return AuditRecord(**values)


def claim(change_id: str = "chg-1", run_id: str = "run-1", **fields: Any) -> ClaimChangeInput:
    """A claim of ``change_id`` by ``run_id`` at T0."""
    return ClaimChangeInput(**{"change_id": change_id, "run_id": run_id, "at": T0, **fields})


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def store(path: Path) -> Iterator[SqliteAuditStore]:
    s = SqliteAuditStore(path)
    yield s
    s.close()


def fill(store: AuditStore, n: int = 5) -> list[AuditRecord]:
    """Append ``n`` records r0..r{n-1}."""
    records = [record(f"r{i}", minutes=i) for i in range(n)]
    for r in records:
        assert store.append(r) is True
    return records


def tamper(path: Path, *statements: str) -> None:
    """What someone with write access to the file can do: drop the triggers, then write."""
    with sqlite3.connect(path) as db:
        for trigger in TRIGGERS:
            db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        for statement in statements:
            db.execute(statement)


def verify(store: AuditStore, **kwargs: Any) -> ChainReport:
    return verify_chain(store.chain(), **kwargs)


def first_break(store: AuditStore) -> str:
    report = verify(store)
    assert not report.intact
    return report.breaks[0].problem


# --------------------------------------------------------------------------------------------------
# The chain
# --------------------------------------------------------------------------------------------------


def test_each_record_links_to_the_one_before(store: SqliteAuditStore) -> None:
    """prev_hash is the previous record's hash ('' first); record_hash covers content and prev."""
    records = fill(store, 3)
    entries = store.entries(AuditQuery())
    assert [e.record for e in entries] == records
    assert [e.prev_hash for e in entries] == ["", entries[0].record_hash, entries[1].record_hash]
    for e in entries:
        assert e.record_hash == chain_hash(content_of(e.record), e.prev_hash)
    report = verify(store)
    assert (report.intact, report.checked, report.head_hash) == (True, 3, entries[2].record_hash)


def test_an_idempotent_append_adds_nothing_to_the_chain(store: SqliteAuditStore) -> None:
    """Appending a stored record_id again writes nothing and the chain stays intact."""
    first, *_ = fill(store, 2)
    assert store.append(first) is False
    assert store.count() == 2
    assert verify(store).intact


async def test_concurrent_appenders_on_one_file_keep_one_chain(path: Path) -> None:
    """Two stores (two connections, as two workers) appending from threads keep one chain."""
    a, b = SqliteAuditStore(path), SqliteAuditStore(path)
    records = [record(f"c{i:02}", minutes=i) for i in range(60)]
    await asyncio.gather(
        *(asyncio.to_thread((a if i % 2 else b).append, r) for i, r in enumerate(records))
    )
    report = verify(a)
    a.close()
    b.close()
    assert (report.intact, report.checked) == (True, 60)


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        pytest.param(
            ["UPDATE audit_records SET actor = 'eve' WHERE record_id = 'r2'"],
            "record 'r2' (#3) does not match its hash: its content or its hash was changed after "
            "it was written",
            id="rewritten",
        ),
        pytest.param(
            ["UPDATE audit_records SET detail = '{\"x\": 1' WHERE record_id = 'r1'"],
            "record 'r1' (#2) does not match its hash: its content or its hash was changed after "
            "it was written",
            id="detail-not-json",
        ),
        pytest.param(
            ["DELETE FROM audit_records WHERE record_id = 'r2'"],
            "record 'r3' (#4) does not follow record 'r1' (#2): a record between them was "
            "removed, or records were reordered or inserted",
            id="removed",
        ),
        pytest.param(
            ["DELETE FROM audit_records WHERE record_id = 'r0'"],
            "record 'r1' (#2) is the first record of the chain but follows another: the records "
            "before it were removed",
            id="first-removed",
        ),
        pytest.param(
            [
                "UPDATE audit_records SET seq = 100 WHERE record_id = 'r1'",
                "UPDATE audit_records SET seq = 2 WHERE record_id = 'r2'",
                "UPDATE audit_records SET seq = 3 WHERE record_id = 'r1'",
            ],
            "record 'r2' (#2) does not follow record 'r0' (#1): a record between them was "
            "removed, or records were reordered or inserted",
            id="reordered",
        ),
        pytest.param(
            ["UPDATE audit_records SET record_hash = '" + "0" * 64 + "' WHERE record_id = 'r3'"],
            "record 'r3' (#4) does not match its hash: its content or its hash was changed after "
            "it was written",
            id="forged-hash",
        ),
        pytest.param(
            [
                "REPLACE INTO audit_records (record_id, action, actor, at, change_id, run_id, "
                "guardrail, policy_hash, report_hash, reason, expires_at, detail, prev_hash, "
                "record_hash) SELECT record_id, action, 'eve', at, change_id, run_id, guardrail, "
                "policy_hash, report_hash, reason, expires_at, detail, prev_hash, record_hash "
                "FROM audit_records WHERE record_id = 'r1'"
            ],
            "record 'r2' (#3) does not follow record 'r0' (#1): a record between them was "
            "removed, or records were reordered or inserted",
            id="replaced",
        ),
        pytest.param(
            [
                "INSERT INTO audit_records (record_id, action, actor, at, change_id, run_id, "
                "guardrail, policy_hash, report_hash, reason, detail) VALUES ('forged', "
                "'approval', 'eve', '2026-06-01T12:00:00.000000+00:00', 'chg-1', 'run-1', '', '', "
                "'', 'approve myself', '{}')"
            ],
            "record 'forged' (#6) has no hash: it was written outside changeguard's store",
            id="inserted-raw",
        ),
    ],
)
def test_tampering_is_detected_at_the_first_bad_record(
    store: SqliteAuditStore, path: Path, statements: list[str], expected: str
) -> None:
    """A rewrite, removal, reorder, forged hash, REPLACE or raw insert breaks the chain there."""
    fill(store, 5)
    assert verify(store).intact
    tamper(path, *statements)
    assert first_break(store) == expected


def test_removing_the_newest_records_is_detected_with_a_noted_head(
    store: SqliteAuditStore, path: Path
) -> None:
    """Truncating the tail keeps the chain consistent; the head noted earlier is then missing."""
    fill(store, 4)
    head = verify(store).head_hash
    tamper(path, "DELETE FROM audit_records WHERE record_id = 'r3'")
    report = verify(store, expect_head=head)
    assert (report.breaks, report.head_found, report.intact) == ([], False, False)
    store.append(record("r9", minutes=9))
    assert verify(store).intact  # the chain alone cannot tell


def test_a_store_from_before_the_chain_is_upgraded_in_place(path: Path) -> None:
    """Old rows (no hash columns) are kept as unchained; new appends chain on from them."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE audit_records (seq INTEGER PRIMARY KEY AUTOINCREMENT, record_id TEXT "
            "NOT NULL UNIQUE, action TEXT NOT NULL, actor TEXT NOT NULL, at TEXT NOT NULL, "
            "change_id TEXT NOT NULL, run_id TEXT NOT NULL, guardrail TEXT NOT NULL, policy_hash "
            "TEXT NOT NULL, report_hash TEXT NOT NULL, reason TEXT NOT NULL, expires_at TEXT, "
            "detail TEXT NOT NULL, recorded_at TEXT NOT NULL DEFAULT '')"
        )
        db.execute(
            "INSERT INTO audit_records (record_id, action, actor, at, change_id, run_id, "
            "guardrail, policy_hash, report_hash, reason, detail) VALUES ('old', 'approval', "
            "'bob', '2026-01-01T00:00:00.000000+00:00', 'chg-0', '', '', '', '', 'old', '{}')"
        )
    store = SqliteAuditStore(path)
    fill(store, 2)
    report = verify(store)
    assert [r.record_id for r in store.list(AuditQuery())] == ["old", "r0", "r1"]
    store.close()
    assert (report.intact, report.checked, report.unchained) == (True, 3, 1)


# --------------------------------------------------------------------------------------------------
# Append-only, also against REPLACE and upserts
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "REPLACE INTO audit_records (record_id, action, actor, at, change_id, run_id, guardrail, "
        "policy_hash, report_hash, reason, detail) VALUES ('r1', 'approval', 'eve', 'x', 'chg-1', "
        "'', '', '', '', 'rewritten', '{}')",
        "INSERT OR REPLACE INTO audit_records (seq, record_id, action, actor, at, change_id, "
        "run_id, guardrail, policy_hash, report_hash, reason, detail) VALUES (1, 'new', "
        "'approval', 'eve', 'x', 'chg-1', '', '', '', '', 'rewritten', '{}')",
        "INSERT INTO audit_records (record_id, action, actor, at, change_id, run_id, guardrail, "
        "policy_hash, report_hash, reason, detail) VALUES ('r1', 'approval', 'eve', 'x', 'chg-1', "
        "'', '', '', '', 'rewritten', '{}') ON CONFLICT(record_id) DO UPDATE SET actor = 'eve'",
        "REPLACE INTO audit_records (record_id, action, actor, at, change_id, run_id, guardrail, "
        "policy_hash, report_hash, reason, detail) VALUES ('other-start', 'started', 'eve', 'x', "
        "'chg-9', 'run-x', '', '', '', '', '{}')",
    ],
    ids=["replace", "replace-by-seq", "upsert", "replace-started"],
)
def test_replace_and_upsert_over_a_stored_record_are_refused(
    store: SqliteAuditStore, statement: str
) -> None:
    """The store's own connection cannot REPLACE or upsert over a record (the INSERT trigger)."""
    fill(store, 2)
    store.claim(claim("chg-9", "run-9"))
    before = store.entries(AuditQuery())
    with pytest.raises(sqlite3.IntegrityError) as caught:
        store._db.execute(statement)  # the connection the issue rewrote records through
    assert str(caught.value) == (
        "audit_records is append-only: REPLACE over a stored record is refused"
    )
    with sqlite3.connect(store.path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute(statement)
    assert store.entries(AuditQuery()) == before
    assert verify(store).intact


# --------------------------------------------------------------------------------------------------
# claim_change
# --------------------------------------------------------------------------------------------------


async def test_claim_change_once_idempotent_for_its_run_refused_for_another(
    store: SqliteAuditStore,
) -> None:
    """The first claim writes 'started'; its run again writes nothing; another run is refused."""
    audit = AuditActivities(store, DEFAULT_DIRECTORY, bundle_hash=lambda: "b" * 16)
    env = ActivityEnvironment()
    inp = claim(requester="alice", team="web", request_digest="d" * 32)
    first = await env.run(audit.claim_change, inp)
    again = await env.run(audit.claim_change, inp)
    other = await env.run(audit.claim_change, claim(run_id="run-2", at=T0 + timedelta(days=1)))
    assert (first.claimed, first.run_id, first.at, first.bundle_hash) == (
        True,
        "run-1",
        T0,
        "b" * 16,
    )
    assert (again.claimed, again.run_id, again.at) == (True, "run-1", T0)
    assert (other.claimed, other.run_id, other.at) == (False, "run-1", T0)
    assert store.list(AuditQuery()) == [
        AuditRecord(
            record_id="started:chg-1",
            action=AuditAction.STARTED,
            actor="alice",
            at=T0,
            change_id="chg-1",
            run_id="run-1",
            policy_hash="b" * 16,
            reason="change id claimed",
            detail={"request_digest": "d" * 32, "team": "web", "run_id": "run-1"},
        )
    ]
    assert verify(store).intact


async def test_concurrent_claims_of_one_id_elect_one_run(path: Path) -> None:
    """Runs claiming one id at once from two stores: exactly one holds it, all agree which."""
    a, b = SqliteAuditStore(path), SqliteAuditStore(path)
    results = await asyncio.gather(
        *(asyncio.to_thread((a if i % 2 else b).claim, claim(run_id=f"run-{i}")) for i in range(12))
    )
    a.close()
    b.close()
    winners = {r.run_id for r in results}
    assert len(winners) == 1
    assert sum(r.claimed for r in results) == 1


def test_a_started_record_cannot_be_written_twice_for_one_change(store: SqliteAuditStore) -> None:
    """A second 'started' for a change id, by any record_id, is refused by the unique index."""
    store.claim(claim())
    with pytest.raises(AuditStoreError) as caught:
        store.append(record("another-start", action=AuditAction.STARTED))
    assert caught.value.retryable is False


# --------------------------------------------------------------------------------------------------
# Bounded, clean records
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"reason": "approve\x00d"}, "reason contains a NUL character"),
        ({"actor": "b\x00b"}, "actor contains a NUL character"),
        ({"detail": {"k\x00": 1}}, "detail key 'k\\x00' contains a NUL character"),
        ({"detail": {"why": ["ok", "no\x00"]}}, "detail.why[1] contains a NUL character"),
        ({"reason": "x" * 9000}, "reason is 9,000 bytes long (at most 8,192)"),
        (
            {"detail": {"blob": "x" * 70_000}},
            "detail is 70,012 bytes long as JSON (at most 65,536)",
        ),
        ({"record_id": "r" * 2000}, "record_id is 2,000 characters long (at most 1,024)"),
        ({"detail": {"ratio": float("nan")}}, "detail.ratio is not a finite number"),
        ({"reason": "\ud800"}, "reason is not valid Unicode (a lone surrogate)"),
    ],
)
async def test_unkeepable_records_are_refused_non_retryably(
    store: SqliteAuditStore, fields: dict[str, Any], problem: str
) -> None:
    """NUL, over-long or non-JSON values fail record_audit once (InvalidInput), writing nothing."""
    audit = AuditActivities(store, DEFAULT_DIRECTORY)
    with pytest.raises(ApplicationError) as caught:
        bad = record(fields.pop("record_id", "bad"), **fields)
        await ActivityEnvironment().run(audit.record_audit, bad)
    assert (caught.value.type, caught.value.non_retryable) == (errors.INVALID_INPUT, True)
    assert caught.value.details == ([problem],)
    assert store.count() == 0


def test_detail_numbers_are_stored_as_every_store_returns_them(store: SqliteAuditStore) -> None:
    """Integral floats beyond 1e16 are kept as integers (as JSONB returns them); -0.0 as 0.0."""
    store.append(record("n", detail={"big": 1e20, "odd": 1.2345e20, "neg": -0.0, "small": 1e-7}))
    assert store.list(AuditQuery())[0].detail == {
        "big": 100000000000000000000,
        "odd": 123450000000000000000,
        "neg": 0.0,
        "small": 1e-7,
    }
    assert verify(store).intact


# --------------------------------------------------------------------------------------------------
# changeguard audit verify, and the story
# --------------------------------------------------------------------------------------------------


def args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="changeguard")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["audit", *argv])


def settings_for(path: Path) -> Settings:
    return Settings.from_env(env={}, audit_url=f"sqlite:///{path}")


async def test_verify_exits_0_intact_and_1_broken_naming_the_record(
    store: SqliteAuditStore, path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``audit verify`` exits 0 on an intact chain, 1 on a broken one with the first bad record."""
    fill(store, 3)
    assert args("verify").run is cmd_verify
    assert await cmd_verify(args("verify"), settings_for(path)) == 0
    assert capsys.readouterr().out.startswith("audit chain intact: 3 records, head ")
    tamper(path, "UPDATE audit_records SET reason = 'nothing to see' WHERE record_id = 'r1'")
    assert await cmd_verify(args("verify", "--json"), settings_for(path)) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["intact"], report["breaks"][0]["record_id"], report["breaks"][0]["seq"]) == (
        False,
        "r1",
        2,
    )


async def test_verify_arguments_and_unreachable_stores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed --head or URL exits 2; a store that cannot be opened exits 4."""
    assert await cmd_verify(args("verify", "--head", "xyz"), settings_for(tmp_path / "a.db")) == 2
    bad_url = Settings.from_env(env={}, audit_url="redis://x")
    assert await cmd_verify(args("verify"), bad_url) == 2
    (tmp_path / "dir.db").mkdir()
    assert await cmd_verify(args("verify"), settings_for(tmp_path / "dir.db")) == 4
    capsys.readouterr()


async def test_verify_reports_progress_and_its_time_on_a_large_store(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A store over 10,000 records reports progress on stderr; intact, exit 0 (time printed)."""
    store = SqliteAuditStore(path)
    # Appending 20,000 records one by one is the slow part; write them in one transaction.
    prev = store._serialised(lambda tx: tx.last_hash(), "read")
    rows = []
    for i in range(20_000):
        r = record(f"bulk-{i:05}", minutes=i)
        h = chain_hash(content_of(r), prev)
        data = content_of(r)
        data["detail"] = json.dumps(data["detail"])
        rows.append((*data.values(), prev, h))
        prev = h
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO audit_records (record_id, action, actor, at, change_id, run_id, "
            "guardrail, policy_hash, report_hash, reason, expires_at, detail, prev_hash, "
            "record_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    store.close()
    started = time.perf_counter()
    code = await cmd_verify(args("verify"), settings_for(path))
    elapsed = time.perf_counter() - started
    captured = capsys.readouterr()
    print(f"verify of 20,000 SQLite records: {elapsed:.2f}s")  # a figure, never an assertion
    assert code == 0
    assert "verified 10,000 of 20,000 records…" in captured.err
    assert "audit chain intact: 20,000 records" in captured.out


async def test_the_story_of_a_change(
    store: SqliteAuditStore,
    path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``audit --change`` tells started, gate, approval, mutation, compensation and outcome."""
    monkeypatch.setenv("COLUMNS", "300")
    store.claim(claim(requester="alice", team="web", request_digest="d" * 32), bundle_hash="b" * 16)
    story = [
        record(
            "g1",
            minutes=1,
            action=AuditAction.GATE,
            actor="changeguard",
            report_hash="r" * 16,
            detail={"decision": "block", "failing_rules": ["business-hours"]},
        ),
        record(
            "a1",
            minutes=2,
            action=AuditAction.APPROVAL,
            guardrail="business-hours",
            report_hash="r" * 16,
            reason="hotfix INC-42",
        ),
        record(
            "m1",
            minutes=3,
            action=AuditAction.MUTATION,
            actor="changeguard",
            reason="deployed 1.1.0",
            detail={"target": "web-01", "idempotency_key": "k-apply"},
        ),
        record(
            "c1",
            minutes=4,
            action=AuditAction.COMPENSATION,
            actor="changeguard",
            reason="reverted to 1.0.0",
            detail={"target": "web-01", "idempotency_key": "k-rev"},
        ),
        record(
            "o1",
            minutes=5,
            action=AuditAction.OUTCOME,
            actor="changeguard",
            reason="error rate critical",
            detail={"outcome": "rolled_back", "applied": 1, "reverted": 1},
        ),
    ]
    for r in story:
        store.append(r)
    code = await cmd_audit(args("--change", "chg-1"), settings_for(path))
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0
    for phrase in (
        "requested by alice",
        "team web",
        "request " + "d" * 32,
        "bundle " + "b" * 16,
        "block · report " + "r" * 16 + " · failing: business-hours",
        "approved business-hours",
        "applied to web-01 · key k-apply · deployed 1.1.0",
        "reverted on web-01 · key k-rev · reverted to 1.0.0",
        "rolled_back · error rate critical · applied 1, reverted 1",
    ):
        assert phrase in out, phrase
    assert out.index("started") < out.index("gate") < out.index("mutation") < out.index("outcome")
    assert await cmd_audit(args("--change", "chg-1", "--json"), settings_for(path)) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["action"] for r in listed] == [
        "started",
        "gate",
        "approval",
        "mutation",
        "compensation",
        "outcome",
    ]
    assert {"seq", "prev_hash", "record_hash"} <= set(listed[0])
