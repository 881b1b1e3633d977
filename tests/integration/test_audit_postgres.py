"""The PostgreSQL audit store against a real server: its own cluster on a loopback port.

The server comes from infra/install-test-deps.sh (never skipped: a missing binary is an error). One
cluster serves the module; every test gets a database of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from temporalio.testing import ActivityEnvironment

from activities.audit import (
    DEFAULT_DIRECTORY,
    AuditActivities,
    AuditStore,
    AuditStoreError,
    PostgresAuditStore,
    open_audit_store,
)
from tests.servers import PostgresServer, free_port
from tests.unit.test_audit_sqlite import AuditStoreContract, record
from workflows.models import AuditQuery


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
    with pytest.raises(AuditStoreError):
        await env.run(activities.record_audit, rec)
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
