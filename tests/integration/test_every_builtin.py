"""Every registered built-in guardrail failing at once, through the real gate on the dev server.

This is also the contract test over the registry: the policy below must name every guardrail the
entry points register, and each non-passing result must carry a reason, a remedy and an owner (I5).
Real parts throughout: the fleet over HTTP, Prometheus scraping it, Alertmanager, Temporal visibility
and a real lock held by another change.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from demo.fleet import FleetServer
from guardrails.base import default_registry
from tests.servers import AlertmanagerServer, PrometheusServer
from worker.main import build_worker
from worker.settings import Settings
from workflows.models import (
    ChangeContext,
    ChangeRequest,
    CheckStatus,
    Decision,
    GateInput,
    GuardrailReport,
    LockHolder,
    Target,
    TargetLockInput,
    lock_id,
)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FleetServer, PrometheusServer, AlertmanagerServer]]:
    fleet = FleetServer(tmp_path_factory.mktemp("fleet") / "fleet.db", port=0)
    fleet.start()
    try:
        with PrometheusServer(tmp_path_factory.mktemp("prom"), [f"127.0.0.1:{fleet.port}"]) as prom:
            prom.wait_for_series("count(fleet_error_ratio) > 0")
            with AlertmanagerServer(tmp_path_factory.mktemp("am")) as am:
                yield fleet, prom, am
    finally:
        fleet.stop()


def _policy(fleet: str, prom: str, am: str, service: str) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    return {
        "guardrails": [
            {
                "use": "change-window",
                "params": {
                    "timezone": "UTC",
                    "allow": ["Mon-Sun 00:00-24:00"],
                    "freeze": [f"{today - timedelta(days=1)}/{today + timedelta(days=30)}"],
                },
            },
            {"use": "target-lock"},
            {"use": "no-conflicting-changes"},
            {"use": "http-health", "params": {"url": f"{fleet}/nope"}},
            {
                "use": "prometheus-query",
                "params": {"url": prom, "query": "max(fleet_error_ratio)", "threshold": 0.0},
            },
            {"use": "target-state", "params": {"expect_version": "9.9.9"}},
            {"use": "environment-boundary"},
            {"use": "irreversible-steps"},
            {
                "use": "no-firing-alerts",
                "params": {"url": am, "matchers": [f'service="{service}"']},
            },
        ]
    }


async def test_every_builtin_fails_at_once_with_reason_remedy_owner(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    world: tuple[FleetServer, PrometheusServer, AlertmanagerServer],
) -> None:
    """One gate run: every registered built-in fails (a held lock queues: wait), each explained."""
    fleet, prom, am = world
    service = f"svc-{uuid.uuid4().hex[:6]}"
    am.post_alert(
        {"alertname": "HighErrorRate", "service": service, "severity": "critical"},
        {"summary": "errors above SLO"},
    )
    am.wait_for_alerts(1, filters=[f'service="{service}"'])
    client = dev_env.client
    settings = Settings.from_env(env={}, task_queue=task_queue)
    policy = _policy(fleet.url, prom.url, am.url, service)
    targets = [Target(id="web-01"), Target(id="web-02", environment="staging")]

    async with build_worker(client, settings, max_cached_workflows=0):
        # Someone else holds web-01's lock, and another change is in flight on web-02.
        other = f"other-{uuid.uuid4().hex[:6]}"
        await client.start_workflow(
            "TargetLock",
            TargetLockInput(target_id="web-01", holder=LockHolder(change_id=other, team="search")),
            id=lock_id("web-01"),
            task_queue=task_queue,
        )
        running = ChangeRequest(
            change_id=f"inflight-{uuid.uuid4().hex[:6]}",
            kind="http-deploy",
            summary="in flight",
            requester="carol",
            team="search",
            environment="prod",
            targets=[Target(id="web-02")],
            params={"base_url": fleet.url, "version": "1.0.1"},
            rollout={"waves": ["100%"], "bake": "10m"},  # type: ignore[arg-type]
        )
        inflight = await client.start_workflow(
            "GuardedChange", running, id=running.change_id, task_queue=task_queue
        )
        for _ in range(200):
            listed = [
                w
                async for w in client.list_workflows(
                    f"ChangeId = '{running.change_id}' AND ChangePhase = 'Baking'"
                )
            ]
            if listed:
                break
            await asyncio.sleep(0.1)
        assert listed, "the in-flight change never became visible as Baking"

        change = ChangeContext(
            change_id=f"all-{uuid.uuid4().hex[:6]}",
            kind="http-deploy",
            summary="everything fails",
            requester="alice",
            team="web",
            environment="prod",
            targets=targets,
            params={"base_url": fleet.url, "version": "1.1.0"},
            deadline=datetime.now(UTC) + timedelta(hours=1),
        )
        report = await client.execute_workflow(
            "GuardrailGate",
            GateInput(change=change, policy=policy),
            id=f"{change.change_id}/gate-1",
            task_queue=task_queue,
            result_type=GuardrailReport,
        )
        await inflight.cancel()
        await client.get_workflow_handle(lock_id("web-01")).terminate("test done")

    names = [c.guardrail for c in report.checks]
    assert names == [g["use"] for g in policy["guardrails"]]
    assert sorted(names) == default_registry().names()  # every registered built-in is covered
    assert report.decision is Decision.BLOCK
    # Every built-in fails, except that a lock held by another change queues this one (wait), and
    # an http-deploy has no irreversible step (tests/integration/test_pg_migrate.py fails that one).
    assert [(c.guardrail, c.status) for c in report.checks if c.status is not CheckStatus.FAIL] == [
        ("target-lock", CheckStatus.WAIT),
        ("irreversible-steps", CheckStatus.PASS),
    ]
    for c in report.checks:
        if not c.passing:
            assert c.reason.strip() and c.remedy.strip() and c.owner.strip(), c.guardrail
    by = {c.guardrail: c for c in report.checks}
    assert by["target-lock"].reason.startswith(f"web-01 is locked by change {other} (team search")
    assert running.change_id in by["no-conflicting-changes"].reason
    assert "web-02" in by["environment-boundary"].reason
    assert "HighErrorRate" in by["no-firing-alerts"].reason
    assert "9.9.9" in by["target-state"].reason
    assert "404" in by["http-health"].reason
    assert "freeze" in by["change-window"].reason
    assert "max(fleet_error_ratio)" in by["prometheus-query"].remedy
