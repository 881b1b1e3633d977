"""Focused regressions for defects the chaos campaign found (docs/chaos.md, "Findings").

Each test names the fault that exposed the defect and fails until the defect is fixed in the code
it belongs to (``activities/``); ``xfail(strict=True)`` keeps the suite honest either way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.api.failure.v1 import Failure
from temporalio.testing import ActivityEnvironment

from activities.audit import AuditActivities, AuditStoreError, SqliteAuditStore
from worker.converter import data_converter
from workflows.models import AuditAction, AuditRecord

UNREACHABLE = "cannot write to the audit database postgresql://127.0.0.1:1/audit: connection lost"


class _UnreachableStore(SqliteAuditStore):
    """A store whose every append fails as an unreachable PostgreSQL does (retryable)."""

    def append(self, record: AuditRecord) -> bool:
        raise AuditStoreError(UNREACHABLE, retryable=True)


def _record() -> AuditRecord:
    return AuditRecord(
        record_id="c1:run:1",
        action=AuditAction.GATE,
        actor="changeguard",
        at=datetime(2026, 12, 1, tzinfo=UTC),
        change_id="c1",
    )


@pytest.mark.xfail(
    strict=True,
    reason="activities/audit.py: `raise as_activity_error(exc) from exc` sets exc.__cause__ = exc "
    "when the error is retryable (as_activity_error returns exc itself)",
)
async def test_a_retryable_audit_failure_reaches_temporal_with_its_own_message(
    tmp_path: Path,
) -> None:
    """Audit store down (audit_restart, audit_partition): the attempt fails with the store's words.

    Found by the campaign: every retryable audit failure raised an error that is its own cause,
    so the SDK's failure converter recursed until RecursionError, logged ~180 KB per attempt, and
    reported "Failed building exception result: maximum recursion depth exceeded" instead.
    """
    (tmp_path / "operators.yaml").write_text("operators: {}\n")
    store = _UnreachableStore(tmp_path / "audit.db")
    acts = AuditActivities(store, f"yaml:{tmp_path / 'operators.yaml'}")
    try:
        with pytest.raises(AuditStoreError) as raised:
            await ActivityEnvironment().run(acts.record_audit, _record())
    finally:
        store.close()
    assert raised.value.__cause__ is not raised.value, "the error is its own cause"
    failure = Failure()
    await data_converter.encode_failure(raised.value, failure)  # what the worker sends
    assert failure.message == UNREACHABLE
