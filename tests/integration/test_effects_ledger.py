"""Effects are counted and recorded by what really happened on the target (I4, issue 10 and 19).

Against the real demo fleet over HTTP with the real ``http-deploy`` kind: a revert an earlier
attempt already made (then the worker died) still counts as reverted, and every mutation and
compensation that took effect is in the change ledger with its idempotency key.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities, SqliteAuditStore
from demo.fleet import FleetServer
from tests.helpers import until_phase
from worker.main import build_worker
from workflows.models import AuditAction, AuditQuery, ChangeResult, Outcome, Phase

pytestmark = pytest.mark.integration


def _deploy(fleet: FleetServer, change_id: str, **rollout: Any) -> dict[str, Any]:
    return {
        "change_id": change_id,
        "kind": "http-deploy",
        "summary": "deploy 1.1.0",
        "requester": "alice",
        "team": "web",
        "environment": "prod",
        "targets": [{"id": "web-01"}, {"id": "web-02"}],
        "params": {"base_url": fleet.url, "version": "1.1.0"},
        "rollout": {"waves": ["100%"], "max_parallel": 2, **rollout},
    }


async def test_a_revert_made_before_a_crash_counts_as_reverted(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    audit: AuditActivities,
    store: SqliteAuditStore,
    fleet: FleetServer,
) -> None:
    """The revert key already applied (an attempt that died after it landed) is counted."""
    change_id = f"eff-{uuid.uuid4().hex[:8]}"
    async with build_worker(dev_env.client, task_queue=task_queue, audit=audit):
        handle = await dev_env.client.start_workflow(
            "GuardedChange",
            _deploy(fleet, change_id, bake="1h"),
            id=change_id,
            task_queue=task_queue,
            result_type=ChangeResult,
        )
        await until_phase(handle, Phase.BAKING, within=30)
        async with httpx.AsyncClient(base_url=fleet.url) as http:
            ledger = (await http.get("/deploys", params={"host": "web-01"})).json()
            before = ledger[-1]["from_version"]
            landed = await http.post(
                "/hosts/web-01/deploy",
                json={"version": before},
                headers={"Idempotency-Key": f"{change_id}:revert:web-01"},
            )
            assert landed.status_code == 200
        await handle.execute_update("rollback", {"operator": "oscar", "reason": "bad metrics"})
        result = await handle.result()
    assert result.outcome is Outcome.ROLLED_BACK
    assert sorted(result.reverted) == ["web-01", "web-02"]
    async with httpx.AsyncClient(base_url=fleet.url) as http:
        for host in ("web-01", "web-02"):
            assert (await http.get(f"/hosts/{host}")).json()["version"] == before
        reverts = [
            d
            for d in (await http.get("/deploys")).json()
            if d["idempotency_key"] == f"{change_id}:revert:web-01"
        ]
    assert len(reverts) == 1  # applied once, by the "earlier attempt"
    records = store.list(AuditQuery(change_id=change_id))
    effects = {
        (r.action, r.detail["target"], r.detail["idempotency_key"])
        for r in records
        if r.action in (AuditAction.MUTATION, AuditAction.COMPENSATION)
    }
    assert effects == {
        (AuditAction.MUTATION, "web-01", f"{change_id}:apply:web-01"),
        (AuditAction.MUTATION, "web-02", f"{change_id}:apply:web-02"),
        (AuditAction.COMPENSATION, "web-01", f"{change_id}:revert:web-01"),
        (AuditAction.COMPENSATION, "web-02", f"{change_id}:revert:web-02"),
    }
    by_key = {r.detail["idempotency_key"]: r for r in records if "idempotency_key" in r.detail}
    assert by_key[f"{change_id}:revert:web-01"].detail["by_earlier_attempt"] is True
    assert records[-1].action is AuditAction.OUTCOME
    assert records[-1].detail["outcome"] == "rolled_back"
