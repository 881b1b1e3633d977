"""Bake and calibrated response against the real fleet: rollback, pause-and-page, resume, timeout."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from demo.fleet import FleetServer
from tests.helpers import until_phase
from tests.integration.conftest import Cli
from workflows.models import (
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    OperatorAction,
    OperatorActionResult,
    Outcome,
    Phase,
)

HOSTS = ["web-01", "web-02", "web-03", "web-04"]


def _request(
    fleet: str, *, version: str, degraded: float, critical: float, **policy: Any
) -> ChangeRequest:
    return ChangeRequest.model_validate(
        {
            "change_id": f"bake-{uuid.uuid4().hex[:8]}",
            "kind": "http-deploy",
            "summary": f"deploy {version}",
            "requester": "alice",
            "team": "web",
            "environment": "prod",
            "targets": [{"id": h} for h in HOSTS],
            "params": {"base_url": fleet, "version": version},
            "rollout": {"waves": ["1", "100%"], "max_parallel": 4, "bake": "2s"},
            "policy": {
                "signals": [
                    {
                        "name": "error-rate",
                        "source": "fleet",
                        "degraded_above": degraded,
                        "critical_above": critical,
                    }
                ],
                **policy,
            },
        }
    )


async def _versions(fleet: FleetServer) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=fleet.url) as http:
        return {
            h["id"]: h["version"] for h in (await http.get("/hosts")).json() if h["id"] in HOSTS
        }


async def _mark_bad(fleet: FleetServer, version: str) -> None:
    async with httpx.AsyncClient(base_url=fleet.url) as http:
        (await http.post(f"/versions/{version}", json={"bad": True})).raise_for_status()


async def _start(
    env: WorkflowEnvironment, tq: str, req: ChangeRequest
) -> WorkflowHandle[Any, ChangeResult]:
    return await env.client.start_workflow(
        "GuardedChange", req, id=req.change_id, task_queue=tq, result_type=ChangeResult
    )


async def test_bad_version_is_rolled_back_on_every_host(
    dev_env: WorkflowEnvironment, task_queue: str, worker: None, fleet: FleetServer
) -> None:
    """A critical error rate during the first bake rolls back; every host is on its old version."""
    await _mark_bad(fleet, "6.6.6")
    req = _request(
        fleet.url,
        version="6.6.6",
        degraded=0.01,
        critical=0.1,
        responses=[{"signal": "error-rate", "state": "critical", "do": "rollback"}],
    )
    result = await (await _start(dev_env, task_queue, req)).result()
    assert result.outcome is Outcome.ROLLED_BACK
    assert result.message.startswith("rolled back: signal error-rate is critical (0.2)")
    assert result.applied == ["web-01"]
    assert await _versions(fleet) == dict.fromkeys(HOSTS, "1.0.0")


async def test_degraded_pauses_pages_and_resumes_complete(
    dev_env: WorkflowEnvironment, task_queue: str, worker: None, fleet: FleetServer, cli: Cli
) -> None:
    """Degraded pauses and pages in each wave's bake; operator resumes (CLI, update) complete it."""
    await _mark_bad(fleet, "7.0.0")
    req = _request(
        fleet.url,
        version="7.0.0",
        degraded=0.1,
        critical=0.5,
        responses=[
            {
                "signal": "error-rate",
                "state": "degraded",
                "do": "pause_and_page",
                "timeout": "5m",
                "then": "rollback",
            }
        ],
    )
    handle = await _start(dev_env, task_queue, req)
    paused = await until_phase(handle, Phase.PAUSED)
    assert paused.pages and paused.pages[0].startswith(
        f"log: {req.change_id} paused: signal error-rate is degraded"
    )
    resumed = await cli(
        "resume", req.change_id, "--operator", "oscar", "--reason", "known noisy host"
    )
    assert resumed.code == 0, resumed.stderr
    # A resume acknowledges the signal for this wave's bake only: wave 2 widens the blast radius
    # and pages again.
    for _ in range(300):
        again = await handle.query("status", result_type=ChangeStatus)
        if again.phase is Phase.PAUSED and len(again.pages) == 2:
            break
        await asyncio.sleep(0.1)
    assert (again.phase, len(again.pages)) == (Phase.PAUSED, 2)
    await handle.execute_update(
        "resume",
        OperatorAction(operator="oscar", reason="still fine"),
        result_type=OperatorActionResult,
    )
    result = await handle.result()
    assert result.outcome is Outcome.COMPLETED
    assert await _versions(fleet) == dict.fromkeys(HOSTS, "7.0.0")


async def test_unanswered_page_times_out_into_rollback(
    dev_env: WorkflowEnvironment, task_queue: str, worker: None, fleet: FleetServer
) -> None:
    """Nobody answers the page within its timeout: the policy's 'then' rolls back."""
    await _mark_bad(fleet, "8.0.0")
    req = _request(
        fleet.url,
        version="8.0.0",
        degraded=0.1,
        critical=0.5,
        responses=[
            {
                "signal": "error-rate",  # a request answers its own signals ("*" is the bundle's)
                "state": "degraded",
                "do": "pause_and_page",
                "timeout": "2s",
                "then": "rollback",
            }
        ],
    )
    handle = await _start(dev_env, task_queue, req)
    await until_phase(handle, Phase.PAUSED)
    result = await handle.result()
    assert result.outcome is Outcome.ROLLED_BACK
    assert "nobody answered the page" in result.message
    assert await _versions(fleet) == dict.fromkeys(HOSTS, "1.0.0")
