"""The audit store's container (infra/postgres): a kill loses nothing committed; a pause is a partition.

The chaos campaign's ``audit_restart`` and ``audit_partition`` are these two container operations;
this checks that they mean what the campaign says they mean, on the image built here.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from activities.audit_store import open_audit_store
from tests.chaos.harness import PostgresContainer, build_postgres_image, docker_available
from workflows.models import AuditAction, AuditQuery, AuditRecord


def _record(n: int) -> AuditRecord:
    return AuditRecord(
        record_id=f"pg-container:{n}",
        action=AuditAction.GATE,
        actor="changeguard",
        at=datetime(2026, 12, 1, tzinfo=UTC),
        change_id="pg-container",
    )


@pytest.mark.integration
@pytest.mark.timeout(300)
async def test_a_killed_audit_container_restarts_with_every_record_and_a_paused_one_hangs(
    tmp_path: Path,
) -> None:
    """A kill and a start keep every committed record (crash recovery); a pause hangs connects."""
    if os.environ.get("CHANGEGUARD_CHAOS_NO_DOCKER"):
        pytest.skip("CHANGEGUARD_CHAOS_NO_DOCKER is set: the campaign runs PostgreSQL as a process")
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    assert await asyncio.to_thread(docker_available), "infra/docker-engine.sh found no engine"
    pg = PostgresContainer(tmp_path / "pg", image=await asyncio.to_thread(build_postgres_image))
    await asyncio.to_thread(pg.start)
    try:
        store = open_audit_store(pg.dsn)
        try:
            assert [store.append(_record(n)) for n in range(3)] == [True] * 3
        finally:
            store.close()

        await asyncio.to_thread(pg.crash)
        await asyncio.to_thread(pg.restart)  # the same container, volume and port
        store = open_audit_store(pg.dsn)
        try:
            records = store.list(AuditQuery(change_id="pg-container"))
        finally:
            store.close()
        assert sorted(r.record_id for r in records) == [f"pg-container:{n}" for n in range(3)]
        assert "automatic recovery in progress" in pg.log_tail(40)

        await asyncio.to_thread(pg.pause)
        try:
            with pytest.raises(psycopg.OperationalError, match="timeout"):  # hangs, not refused
                await asyncio.to_thread(psycopg.connect, pg.dsn, connect_timeout=2)
        finally:
            await asyncio.to_thread(pg.unpause)
        with psycopg.connect(pg.dsn, connect_timeout=5) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        await asyncio.to_thread(pg.stop)
