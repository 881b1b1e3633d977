"""The PostgreSQL audit store against a real server: its own cluster on a loopback port.

The server comes from infra/install-test-deps.sh (never skipped: a missing binary is an error). One
cluster serves the module; every test gets a database of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.audit import (
    DEFAULT_DIRECTORY,
    AuditActivities,
    AuditStore,
    AuditStoreError,
    PostgresAuditStore,
    open_audit_store,
    postgres_schema,
)
from activities.audit_chain import verify_chain
from tests.servers import PostgresServer, free_port
from tests.unit.activities.test_audit_sqlite import T0, AuditStoreContract, record
from workflows import errors
from workflows.models import AuditAction, AuditQuery, ClaimChangeInput


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster for this module (initdb + postgres, about a second)."""
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    """The URL of an empty database of this test's own."""
    return postgres.create_database(f"audit_{uuid.uuid4().hex[:12]}")


class TestPostgresAuditStore(AuditStoreContract):
    refused = psycopg.errors.RaiseException

    @pytest.fixture
    def store(self, dsn: str) -> Iterator[AuditStore]:
        store = open_audit_store(dsn)
        assert isinstance(store, PostgresAuditStore)
        yield store
        store.close()

    def execute_raw(self, store: AuditStore, statement: str) -> None:
        assert isinstance(store, PostgresAuditStore)
        with psycopg.connect(store.dsn, autocommit=True) as conn:
            conn.execute(statement)

    def test_truncate_is_refused_too(self, store: AuditStore) -> None:
        """TRUNCATE, which row triggers do not see, is refused by a statement trigger."""
        rec = record("approve-1")
        store.append(rec)
        with pytest.raises(psycopg.errors.RaiseException) as caught:
            self.execute_raw(store, "TRUNCATE audit_records")
        assert str(caught.value).splitlines()[0] == (
            "audit_records is append-only: TRUNCATE is refused"
        )
        assert store.list(AuditQuery()) == [rec]


async def test_workers_starting_together_create_the_schema_once(dsn: str) -> None:
    """Several stores opened at once on an empty database all work and share one table."""
    stores = await asyncio.gather(*(asyncio.to_thread(PostgresAuditStore, dsn) for _ in range(6)))
    rec = record("approve-1")
    inserted = [s.append(rec) for s in stores]
    listings = [s.list(AuditQuery()) for s in stores]
    for s in stores:
        s.close()
    assert sorted(inserted) == [False] * 5 + [True]
    assert listings == [[rec]] * 6


def test_a_role_with_only_insert_and_select_can_use_an_existing_store(
    dsn: str, postgres: PostgresServer
) -> None:
    """Once the owner created the schema, a role without DDL rights appends and lists."""
    PostgresAuditStore(dsn).close()
    role = f"appender_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT INSERT, SELECT ON audit_records TO {}").format(sql.Identifier(role))
        )
    database = dsn.rsplit("/", 1)[1]
    limited = PostgresAuditStore(f"postgresql://{role}@127.0.0.1:{postgres.port}/{database}")
    rec = record("approve-1")
    assert limited.append(rec) is True
    assert limited.list(AuditQuery()) == [rec]
    limited.close()


async def test_a_dropped_connection_fails_one_attempt_and_the_retry_succeeds(dsn: str) -> None:
    """When the server drops the connection, that write fails retryably and the next reconnects."""
    store = PostgresAuditStore(dsn)
    activities = AuditActivities(store, DEFAULT_DIRECTORY)
    env = ActivityEnvironment()
    rec = record("approve-1")
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'changeguard' AND datname = current_database()"
        )
    with pytest.raises(ApplicationError) as caught:
        await env.run(activities.record_audit, rec)
    assert (caught.value.type, caught.value.non_retryable) == ("AuditUnavailable", False)
    assert isinstance(caught.value.__cause__, AuditStoreError)
    assert await env.run(activities.record_audit, rec) is True
    assert await env.run(activities.record_audit, rec) is False
    assert store.list(AuditQuery()) == [rec]
    store.close()


def test_an_unreachable_server_is_named_without_its_password() -> None:
    """Opening a store on a closed port fails with the server named, never the password."""
    port = free_port()
    with pytest.raises(AuditStoreError) as caught:
        PostgresAuditStore(f"postgresql://audit:s3cret@127.0.0.1:{port}/audit", connect_timeout=2)
    message = str(caught.value)
    assert message.startswith(
        f"cannot open the audit database postgresql://audit@127.0.0.1:{port}/audit: "
    )
    assert "s3cret" not in message


# --------------------------------------------------------------------------------------------------
# The owner / workers split, the chain and the claim on PostgreSQL
# --------------------------------------------------------------------------------------------------

SCHEMA_SQL = Path(__file__).resolve().parents[2] / "infra" / "postgres" / "audit-schema.sql"
WORKER = "changeguard_worker"


@pytest.fixture
def split(dsn: str, postgres: PostgresServer) -> tuple[str, str]:
    """A database whose audit table an owner role created with audit-schema.sql; (owner, worker)."""
    database = dsn.rsplit("/", 1)[1]
    owner = postgres.ensure_role(f"owner_{uuid.uuid4().hex[:8]}")
    postgres.ensure_role(WORKER)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                sql.Identifier(database), sql.Identifier(owner)
            )
        )
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
    with psycopg.connect(postgres.dsn_as(owner, database), autocommit=True) as conn:
        conn.execute(SCHEMA_SQL.read_text())
    return postgres.dsn_as(owner, database), postgres.dsn_as(WORKER, database)


def test_the_schema_file_is_the_stores_own_ddl() -> None:
    """infra/postgres/audit-schema.sql holds postgres_schema() verbatim, plus the grants."""
    text = SCHEMA_SQL.read_text()
    assert postgres_schema() in text
    assert f"GRANT SELECT, INSERT ON audit_records TO {WORKER};" in text


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_records SET actor = 'eve'",
        "DELETE FROM audit_records",
        "TRUNCATE audit_records",
        "ALTER TABLE audit_records DISABLE TRIGGER ALL",
        "ALTER TABLE audit_records DISABLE TRIGGER audit_records_append_only",
        "DROP TRIGGER audit_records_append_only ON audit_records",
        "DROP TABLE audit_records",
        "SET session_replication_role = replica",
        "CREATE OR REPLACE FUNCTION audit_records_refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RETURN NEW; END $$",
        "INSERT INTO audit_records (record_id, action, actor, at, change_id, run_id, guardrail, "
        "policy_hash, report_hash, reason, detail) VALUES ('r0', 'approval', 'eve', now(), 'c', "
        "'', '', '', '', 'x', '{}') ON CONFLICT (record_id) DO UPDATE SET actor = 'eve'",
    ],
    ids=[
        "update",
        "delete",
        "truncate",
        "disable-all",
        "disable-one",
        "drop-trigger",
        "drop-table",
        "replication-role",
        "replace-function",
        "upsert",
    ],
)
def test_the_workers_role_cannot_rewrite_or_disable_anything(
    split: tuple[str, str], statement: str
) -> None:
    """As the workers' role: no UPDATE, DELETE, TRUNCATE, trigger or function change, no upsert."""
    _, worker = split
    store = PostgresAuditStore(worker)
    store.append(record("r0"))
    with psycopg.connect(worker, autocommit=True) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute(statement)
    assert isinstance(caught.value, psycopg.errors.InsufficientPrivilege), caught.value
    assert store.list(AuditQuery()) == [record("r0")]
    assert verify_chain(store.chain()).intact
    store.close()


def test_the_workers_role_appends_claims_lists_and_verifies(split: tuple[str, str]) -> None:
    """Everything a worker and ``audit verify`` need works with INSERT and SELECT only."""
    _, worker = split
    store = open_audit_store(worker)
    assert store.append(record("r0")) is True
    assert store.append(record("r0")) is False
    got = store.claim(ClaimChangeInput(change_id="chg-1", run_id="run-1", at=T0), bundle_hash="b")
    again = store.claim(ClaimChangeInput(change_id="chg-1", run_id="run-2", at=T0))
    assert (got.claimed, again.claimed, again.run_id, again.at) == (True, False, "run-1", T0)
    report = verify_chain(store.chain())
    assert (report.intact, report.checked) == (True, 2)
    store.close()


async def test_concurrent_workers_keep_one_chain(split: tuple[str, str]) -> None:
    """Six workers' stores appending at once (an advisory lock per append) keep one chain."""
    _, worker = split
    stores = [PostgresAuditStore(worker) for _ in range(6)]
    records = [record(f"c{i:03}", minutes=i) for i in range(90)]
    await asyncio.gather(
        *(asyncio.to_thread(stores[i % 6].append, r) for i, r in enumerate(records))
    )
    claims = await asyncio.gather(
        *(
            asyncio.to_thread(
                stores[i % 6].claim, ClaimChangeInput(change_id="chg-x", run_id=f"run-{i}", at=T0)
            )
            for i in range(12)
        )
    )
    report = verify_chain(stores[0].chain())
    for s in stores:
        s.close()
    assert (report.intact, report.checked) == (True, 91)
    assert sum(c.claimed for c in claims) == 1 and len({c.run_id for c in claims}) == 1


@pytest.mark.parametrize(
    ("statements", "expected"),
    [
        pytest.param(
            ["UPDATE audit_records SET reason = 'nothing to see' WHERE record_id = 'r1'"],
            "record 'r1' (#2) does not match its hash",
            id="rewritten",
        ),
        pytest.param(
            ["DELETE FROM audit_records WHERE record_id = 'r1'"],
            "record 'r2' (#3) does not follow record 'r0' (#1)",
            id="removed",
        ),
        pytest.param(
            [
                "WITH moved AS (DELETE FROM audit_records WHERE record_id = 'r1' RETURNING *) "
                "INSERT INTO audit_records (record_id, action, actor, at, change_id, run_id, "
                "guardrail, policy_hash, report_hash, reason, expires_at, detail, prev_hash, "
                "record_hash) SELECT record_id, action, actor, at, change_id, run_id, guardrail, "
                "policy_hash, report_hash, reason, expires_at, detail, prev_hash, record_hash "
                "FROM moved"
            ],
            "record 'r2' (#3) does not follow record 'r0' (#1)",
            id="reordered",
        ),
    ],
)
def test_tampering_by_the_owner_is_detected(
    split: tuple[str, str], statements: list[str], expected: str
) -> None:
    """The owner can disable the triggers and rewrite; verify names the first bad record."""
    owner, worker = split
    store = PostgresAuditStore(worker)
    for i in range(4):
        store.append(record(f"r{i}", minutes=i))
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_records DISABLE TRIGGER USER")
        for statement in statements:
            conn.execute(statement)
    report = verify_chain(store.chain())
    store.close()
    assert not report.intact
    assert report.breaks[0].problem.startswith(expected), report.breaks[0].problem


async def test_nul_and_odd_numbers_on_postgresql(dsn: str) -> None:
    """NUL fails once (InvalidInput, non-retryable); odd detail numbers verify after JSONB."""
    store = PostgresAuditStore(dsn)
    activities = AuditActivities(store, DEFAULT_DIRECTORY)
    with pytest.raises(ApplicationError) as caught:
        await ActivityEnvironment().run(activities.record_audit, record("nul", reason="a\x00b"))
    assert (caught.value.type, caught.value.non_retryable) == (errors.INVALID_INPUT, True)
    odd = {
        "big": 1e20,
        "odd": 1.2345e20,
        "neg": -0.0,
        "small": 1e-7,
        "huge": 2**70,
        "u": "Zürich ✓",
    }
    store.append(record("odd", detail=odd))
    assert verify_chain(store.chain()).intact
    assert store.list(AuditQuery())[0].detail["odd"] == 123450000000000000000
    store.close()


def test_an_incomplete_schema_names_the_fix_for_a_role_without_ddl(
    dsn: str, postgres: PostgresServer
) -> None:
    """A table from before the chain, opened by the workers' role, says to run audit-schema.sql."""
    database = dsn.rsplit("/", 1)[1]
    postgres.ensure_role(WORKER)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE audit_records (seq BIGINT PRIMARY KEY, record_id TEXT)")
        conn.execute(f"GRANT SELECT, INSERT ON audit_records TO {WORKER}")
    with pytest.raises(AuditStoreError) as caught:
        PostgresAuditStore(postgres.dsn_as(WORKER, database))
    assert "infra/postgres/audit-schema.sql" in str(caught.value)


def _gate(record_id: str, change_id: str, minutes: int, decision: str, checks: list[Any]) -> Any:
    failing = [
        c["rule"] for c in checks if c["mode"] == "enforce" and c["status"] in ("fail", "error")
    ]
    return record(
        record_id,
        change_id=change_id,
        minutes=minutes,
        action=AuditAction.GATE,
        guardrail="",
        detail={"decision": decision, "failing": failing, "checks": checks},
    )


async def test_report_rules_reads_postgresql_as_it_reads_sqlite(dsn: str, tmp_path: Path) -> None:
    """``changeguard report rules --json`` gives the same figures from either store."""
    hours = {"rule": "business-hours", "guardrail": "change-window", "opt_out": "approvable"}
    canary = {"rule": "canary", "guardrail": "prometheus-query", "opt_out": "approvable"}
    records = [
        _gate("g1", "c1", 0, "block", [{**hours, "status": "fail", "mode": "enforce", "ms": 4}]),
        record("a1", change_id="c1", minutes=1, guardrail="business-hours"),
        _gate("g2", "c2", 2, "block", [{**hours, "status": "fail", "mode": "enforce", "ms": 9}]),
        _gate(
            "g3",
            "c3",
            3,
            "proceed",
            [
                {**hours, "status": "pass", "mode": "enforce", "ms": 2},
                {**canary, "status": "fail", "mode": "shadow", "ms": 40},
            ],
        ),
        record("resume", change_id="c3", minutes=4, action=AuditAction.RESUME),
    ]
    sqlite_url = f"sqlite:///{tmp_path / 'audit.db'}"
    for url in (dsn, sqlite_url):
        store = open_audit_store(url)
        for r in records:
            store.append(r)
        store.close()

    async def report(url: str) -> Any:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            "report",
            "rules",
            "--json",
            "--since",
            T0.isoformat(),
            env={**os.environ, "CHANGEGUARD_AUDIT_URL": url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()
        return json.loads(out)["rules"]

    from_pg, from_sqlite = await report(dsn), await report(sqlite_url)
    assert from_pg == from_sqlite
    assert [
        (r["rule"], r["evaluations"], r["blocked"], r["approved"], r["would_have_blocked"])
        for r in from_pg
    ] == [("business-hours", 3, 2, 1, 0), ("canary", 1, 0, 0, 1)]
    assert (from_pg[0]["p50_ms"], from_pg[0]["p95_ms"]) == (4, 9)
