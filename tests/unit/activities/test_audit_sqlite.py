"""The SQLite audit store, the behaviour every audit store shares, and ``changeguard audit``.

``AuditStoreContract`` holds the tests every store must pass; ``tests/integration/
test_audit_postgres.py`` runs the same class against a real PostgreSQL server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.audit import (
    DEFAULT_DIRECTORY,
    AuditActivities,
    AuditRecordInvalid,
    AuditStore,
    AuditUrlError,
    SqliteAuditStore,
    open_audit_store,
)
from activities.audit_chain import verify_chain
from cli.audit import add_parser, cmd_audit
from worker.settings import Settings
from workflows.models import AuditAction, AuditQuery, AuditRecord

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def record(
    record_id: str, *, change_id: str = "chg-1", minutes: int = 0, **fields: Any
) -> AuditRecord:
    """An approval of ``change_id`` at ``T0 + minutes``."""
    values: dict[str, Any] = {
        "record_id": record_id,
        "action": AuditAction.APPROVAL,
        "actor": "bob",
        "at": T0 + timedelta(minutes=minutes),
        "change_id": change_id,
        "run_id": "run-1",
        "guardrail": "change-window",
        "policy_hash": "p" * 16,
        "report_hash": "r" * 16,
        "reason": "hotfix for INC-42",
    }
    values.update(fields)
    return AuditRecord(**values)


FULL = record(
    "full",
    action=AuditAction.APPROVAL_REJECTED,
    actor="mallory",
    at=datetime(2026, 6, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
    expires_at=datetime(2026, 6, 1, 16, 30, tzinfo=UTC),
    detail={
        "why": "mallory is not in sre-leads",
        "guardrails": ["change-window", "http-health"],
        "nested": {"count": 2, "ratio": 0.25, "ok": False, "none": None},
        "unicode": "Zürich ✓",
    },
)
"""A record with every field set, in a non-UTC zone, with nested detail."""


class AuditStoreContract:
    """Behaviour every audit store shares; subclasses provide ``store`` and ``refused``."""

    refused: type[Exception] = Exception
    """What the database raises when an UPDATE or DELETE is refused."""

    def execute_raw(self, store: AuditStore, statement: str) -> None:
        """Run ``statement`` on the store's database through a connection of its own."""
        raise NotImplementedError

    def test_append_is_idempotent(self, store: AuditStore) -> None:
        """The first append of a record_id inserts; the second adds nothing."""
        first = record("approve-1")
        assert [store.append(first), store.append(first)] == [True, False]
        assert store.list(AuditQuery()) == [first]

    def test_append_many_writes_in_order_chained_and_skips_stored_ids(
        self, store: AuditStore
    ) -> None:
        """A chunk's records in one call: in order, each chained, a stored id left alone."""
        chunk = [record(f"effect-{i}", minutes=i) for i in range(1, 6)]
        assert store.append(chunk[0])
        assert store.append_many(chunk) == [False, True, True, True, True]
        assert store.list(AuditQuery()) == chunk
        assert store.append_many(chunk) == [False] * 5
        assert store.append_many([]) == []
        assert store.count() == 5
        report = verify_chain(store.chain())
        assert report.intact and report.checked == 5

    def test_append_many_writes_none_when_one_record_is_invalid(self, store: AuditStore) -> None:
        """All or none: a bad record in the middle refuses the chunk before anything is written."""
        chunk = [record("effect-1"), record("effect-2", reason="nul \x00 here"), record("e-3")]
        with pytest.raises(AuditRecordInvalid, match="NUL"):
            store.append_many(chunk)
        assert store.count() == 0

    async def test_retried_activity_never_duplicates(self, store: AuditStore) -> None:
        """Running record_audit twice with one record (a retry) stores it once."""
        activities = AuditActivities(store, DEFAULT_DIRECTORY)
        env = ActivityEnvironment()
        rec = record("approve-1")
        results = [
            await env.run(activities.record_audit, rec),
            await env.run(activities.record_audit, rec),
        ]
        assert results == [True, False]
        assert store.list(AuditQuery(change_id="chg-1")) == [rec]

    def test_listing_filters_by_time_and_action(self, store: AuditStore) -> None:
        """``since`` keeps records at or after it; ``actions`` keeps those actions only."""
        early = record("early", minutes=-90, action=AuditAction.GATE)
        gate = record("gate", minutes=0, action=AuditAction.GATE, change_id="chg-2")
        approval = record("approval", minutes=5)
        resume = record("resume", minutes=10, action=AuditAction.RESUME)
        for r in (resume, approval, gate, early):
            store.append(r)
        query = AuditQuery(since=T0, actions=[AuditAction.GATE, AuditAction.APPROVAL])
        assert store.list(query) == [gate, approval]
        assert store.list(AuditQuery(since=T0 + timedelta(minutes=5))) == [approval, resume]
        both = AuditQuery(change_id="chg-1", actions=[AuditAction.GATE])
        assert store.list(both) == [early]

    def test_listing_filters_by_change_in_time_order(self, store: AuditStore) -> None:
        """Listing one change returns its records only, oldest first, whatever the write order."""
        late = record("c1-late", minutes=30, action=AuditAction.RESUME)
        early = record("c1-early", minutes=-5, action=AuditAction.RECHECK)
        other = record("c2", change_id="chg-2", minutes=10, action=AuditAction.ABORT)
        middle = record("c1-middle", minutes=0)
        for r in (late, early, other, middle):
            assert store.append(r) is True
        assert store.list(AuditQuery(change_id="chg-1")) == [early, middle, late]
        assert store.list(AuditQuery()) == [early, middle, other, late]
        assert store.list(AuditQuery(change_id="chg-1", limit=2)) == [middle, late]
        assert store.list(AuditQuery(change_id="chg-none")) == []

    def test_update_and_delete_are_refused_by_the_database(self, store: AuditStore) -> None:
        """UPDATE and DELETE on the table fail in the database itself, and nothing changes."""
        rec = record("approve-1")
        store.append(rec)
        for statement, verb in (
            ("UPDATE audit_records SET actor = 'eve'", "UPDATE"),
            ("DELETE FROM audit_records", "DELETE"),
        ):
            with pytest.raises(self.refused) as caught:
                self.execute_raw(store, statement)
            message = str(caught.value).splitlines()[0]
            assert message == f"audit_records is append-only: {verb} is refused"
        assert store.list(AuditQuery()) == [rec]

    def test_every_field_round_trips(self, store: AuditStore) -> None:
        """A record with every field set, and one with none optional, read back equal."""
        bare = AuditRecord(
            record_id="bare", action=AuditAction.DEADLINE, actor="changeguard", at=T0, change_id="c"
        )
        store.append(FULL)
        store.append(bare)
        assert store.list(AuditQuery()) == [bare, FULL]
        assert store.list(AuditQuery(change_id="chg-1"))[0].model_dump() == FULL.model_dump()

    async def test_concurrent_appends_from_threads(self, store: AuditStore) -> None:
        """Threads appending at once lose nothing and insert a duplicated record_id once."""
        records = [record(f"r{i:02}", minutes=i) for i in range(40)]
        inserted = await asyncio.gather(*(asyncio.to_thread(store.append, r) for r in records))
        again = await asyncio.gather(
            *(asyncio.to_thread(store.append, records[0]) for _ in range(8))
        )
        assert inserted == [True] * 40
        assert again == [False] * 8
        assert store.list(AuditQuery()) == records


class TestSqliteAuditStore(AuditStoreContract):
    refused = sqlite3.IntegrityError

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteAuditStore]:
        store = SqliteAuditStore(tmp_path / "state" / "audit.db")
        yield store
        store.close()

    def execute_raw(self, store: AuditStore, statement: str) -> None:
        assert isinstance(store, SqliteAuditStore)
        with sqlite3.connect(store.path) as db:
            db.execute(statement)

    def test_records_survive_reopening_in_wal_mode(self, tmp_path: Path) -> None:
        """The file is in WAL mode, and records written before closing are there after reopening."""
        path = tmp_path / "audit.db"
        first = SqliteAuditStore(path)
        first.append(FULL)
        first.close()
        first.close()
        reopened = SqliteAuditStore(path)
        assert reopened.list(AuditQuery()) == [FULL]
        reopened.close()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_open_audit_store_resolves_sqlite_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sqlite:///rel is relative to the working directory, sqlite:////abs absolute."""
    monkeypatch.chdir(tmp_path)
    relative = open_audit_store("sqlite:///.changeguard/audit.db")
    absolute = open_audit_store(f"sqlite:///{tmp_path}/abs/audit.db")
    assert isinstance(relative, SqliteAuditStore)
    assert isinstance(absolute, SqliteAuditStore)
    relative.close()
    absolute.close()
    assert (tmp_path / ".changeguard" / "audit.db").is_file()
    assert (tmp_path / "abs" / "audit.db").is_file()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://audit:s3cret@db/audit", "mysql://audit:***@db/audit"),
        ("sqlite://audit.db", "sqlite://audit.db"),
        ("audit.db", "audit.db"),
    ],
)
def test_open_audit_store_names_the_accepted_schemes(url: str, shown: str) -> None:
    """Another scheme is refused with the accepted forms, and a password is never shown."""
    with pytest.raises(AuditUrlError) as caught:
        open_audit_store(url)
    assert str(caught.value) == (
        f"audit store URL {shown!r} is not supported; use sqlite:///PATH "
        "(e.g. sqlite:///.changeguard/audit.db) or postgresql://USER@HOST:PORT/DATABASE"
    )


def test_settings_name_the_audit_store() -> None:
    """CHANGEGUARD_AUDIT_URL sets the audit store; the default is a SQLite file in .changeguard."""
    assert Settings.from_env(env={}).audit_url == "sqlite:///.changeguard/audit.db"
    env = {"CHANGEGUARD_AUDIT_URL": "postgresql://changeguard@db/audit"}
    assert Settings.from_env(env=env).audit_url == "postgresql://changeguard@db/audit"


# --------------------------------------------------------------------------------------------------
# changeguard audit
# --------------------------------------------------------------------------------------------------


def audit_args(*argv: str) -> argparse.Namespace:
    """Parse ``changeguard audit ARGV`` with the subcommand's own parser."""
    parser = argparse.ArgumentParser(prog="changeguard")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["audit", *argv])


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Settings, list[AuditRecord]]:
    """Settings naming a SQLite store holding two records of chg-1 and one of chg-2."""
    path = tmp_path / "audit.db"
    records = [record("a", minutes=1), record("b", change_id="chg-2", minutes=2), FULL]
    store = SqliteAuditStore(path)
    for r in records:
        store.append(r)
    store.close()
    return Settings.from_env(env={}, audit_url=f"sqlite:///{path}"), records


async def test_cmd_audit_json_lists_the_records(
    filled: tuple[Settings, list[AuditRecord]], capsys: pytest.CaptureFixture[str]
) -> None:
    """``audit --change ID --json`` prints that change's records as one JSON list, oldest first."""
    settings, (a, _, full) = filled
    code = await cmd_audit(audit_args("--change", "chg-1", "--json"), settings)
    out = capsys.readouterr().out
    assert code == 0
    assert [AuditRecord.model_validate(r) for r in json.loads(out)] == [a, full]
    assert json.loads(out)[1]["at"] == "2026-06-01T12:30:15.123456Z"


def test_audit_subcommand_parses_its_options() -> None:
    """``audit`` takes --change, --limit and --json, and runs cmd_audit."""
    args = audit_args("--change", "chg-1", "--limit", "5", "--json")
    assert (args.change, args.limit, args.json, args.run) == ("chg-1", 5, True, cmd_audit)
    defaults = audit_args()
    assert (defaults.change, defaults.limit, defaults.json) == (None, 1000, False)


async def test_cmd_audit_table_shows_every_column(
    filled: tuple[Settings, list[AuditRecord]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --json the records are a table with when, action, actor, change, hashes and reason."""
    monkeypatch.setenv("COLUMNS", "250")
    settings, _ = filled
    code = await cmd_audit(audit_args(), settings)
    out = capsys.readouterr().out
    rows = [line.replace("┃", "│").split("│")[1:-1] for line in out.splitlines()]
    cells = [[c.strip() for c in row] for row in rows if row]
    assert code == 0
    hash_ = "r" * 16
    reason = "hotfix for INC-42"
    assert cells == [
        ["when", "action", "actor", "change", "guardrail", "report hash", "reason", "expires"],
        ["2026-06-01 12:01:00Z", "approval", "bob", "chg-1", "change-window", hash_, reason, ""],
        ["2026-06-01 12:02:00Z", "approval", "bob", "chg-2", "change-window", hash_, reason, ""],
        [
            *("2026-06-01 12:30:15Z", "approval_rejected", "mallory", "chg-1", "change-window"),
            *(hash_, reason, "2026-06-01 16:30:00Z"),
        ],
    ]


async def test_cmd_audit_without_records_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty store lists nothing: exit 0, a sentence for people, [] for programs."""
    settings = Settings.from_env(env={}, audit_url=f"sqlite:///{tmp_path}/audit.db")
    assert await cmd_audit(audit_args("--change", "chg-9"), settings) == 0
    assert capsys.readouterr().out == "no audit records for change chg-9\n"
    assert await cmd_audit(audit_args("--json"), settings) == 0
    assert capsys.readouterr().out == "[]\n"


async def test_cmd_audit_with_a_bad_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unsupported audit URL is invalid input (exit 2) with the accepted forms on stderr."""
    settings = Settings.from_env(env={}, audit_url="redis://localhost/0")
    assert await cmd_audit(audit_args("--json"), settings) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "use sqlite:///PATH" in captured.err
