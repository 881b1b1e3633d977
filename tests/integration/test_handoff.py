"""Hand-off: the fleet's asynchronous drain job completes the activity through the callback endpoint.

The dev server, the demo fleet over HTTP and the worker's callback server (``worker.callbacks``) are
real. A worker restarted while a job runs: the job's callback reaches the new worker's endpoint (same
port, same secret) and completes the activity. A job that never calls back: the heartbeat timeout
retries the attempt, which finds the job finished under the same idempotency key; the job ran once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities
from activities.kinds.base import new_registry
from activities.kinds.fleet_drain import FleetDrain
from demo.fleet import FleetServer
from tests.helpers import OPEN_BUNDLE
from tests.servers import free_port
from worker.callbacks import serve_callbacks
from worker.main import build_worker
from workflows.models import ChangeResult, Outcome

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = b"test-callback-secret-0123456789"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetServer]:
    with FleetServer(tmp_path / "fleet.db", hosts=2) as server:
        yield server


@contextlib.asynccontextmanager
async def worker(
    dev_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, port: int
) -> AsyncIterator[None]:
    """A worker and its callback server on ``port``."""
    kinds = new_registry()
    kinds.register(FleetDrain)
    async with (
        serve_callbacks(dev_env.client, kinds=kinds, ledger=audit.store, port=port, secret=SECRET),
        build_worker(
            dev_env.client,
            task_queue=task_queue,
            bundle=OPEN_BUNDLE,
            kinds=kinds,
            audit=audit,
            max_cached_workflows=0,
        ),
    ):
        yield


async def start(
    dev_env: WorkflowEnvironment, task_queue: str, fleet: FleetServer, duration_ms: int
) -> WorkflowHandle[Any, ChangeResult]:
    change_id = f"drain-{uuid.uuid4().hex[:8]}"
    return await dev_env.client.start_workflow(
        "GuardedChange",
        {
            "change_id": change_id,
            "kind": "fleet-drain",
            "summary": "drain web-01",
            "requester": "alice",
            "team": "web",
            "environment": "prod",
            "targets": [{"id": "web-01"}],
            "params": {
                "base_url": fleet.url,
                "duration_ms": duration_ms,
                "progress_every_ms": 200,
                "heartbeat_interval": "1s",
            },
            "rollout": {"waves": ["100%"], "max_parallel": 1},
        },
        id=change_id,
        task_queue=task_queue,
        result_type=ChangeResult,
    )


async def drains(fleet: FleetServer) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=fleet.url, trust_env=False, timeout=5) as client:
        jobs: list[dict[str, Any]] = (await client.get("/drains")).json()
    return jobs


async def final_attempt(handle: WorkflowHandle[Any, Any]) -> int:
    """The attempt of apply_change that finished (history records only that one's start)."""
    scheduled: set[int] = set()
    attempt = 0
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if event.activity_task_scheduled_event_attributes.activity_type.name == "apply_change":
                scheduled.add(event.event_id)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs = event.activity_task_started_event_attributes
            if attrs.scheduled_event_id in scheduled:
                attempt = attrs.attempt
    return attempt


async def test_the_callback_completes_the_activity_on_a_restarted_worker(
    dev_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, fleet: FleetServer
) -> None:
    """Worker restarted mid-job: the job's final callback completes it on the new worker."""
    port = free_port()
    async with worker(dev_env, task_queue, audit, port):
        handle = await start(dev_env, task_queue, fleet, duration_ms=4000)
        deadline = time.monotonic() + 20
        while not await drains(fleet):
            assert time.monotonic() < deadline, "the drain job never started"
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the job keeps running, and reporting into nothing
    async with worker(dev_env, task_queue, audit, port):
        result = await asyncio.wait_for(handle.result(), timeout=30)
    assert (result.outcome, result.applied) == (Outcome.COMPLETED, ["web-01"]), result.message
    jobs = await drains(fleet)
    assert [(j["key"], j["state"], j["runs"]) for j in jobs] == [
        (f"{handle.id}:apply:web-01", "done", 1)
    ]
    assert await final_attempt(handle) == 1, "completed by the callback, not by a retry"


async def test_a_job_that_never_calls_back_is_retried_after_the_heartbeat_timeout(
    dev_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, fleet: FleetServer
) -> None:
    """A silent job: the heartbeat timeout retries the attempt; the job still ran once."""
    async with httpx.AsyncClient(base_url=fleet.url, trust_env=False, timeout=5) as client:
        (await client.post("/admin/faults", json={"silent_drains": 1})).raise_for_status()
    async with worker(dev_env, task_queue, audit, free_port()):
        handle = await start(dev_env, task_queue, fleet, duration_ms=300)
        result = await asyncio.wait_for(handle.result(), timeout=60)
    assert (result.outcome, result.applied) == (Outcome.COMPLETED, ["web-01"]), result.message
    jobs = await drains(fleet)
    assert [(j["state"], j["runs"], j["silent"]) for j in jobs] == [("done", 1, True)]
    assert await final_attempt(handle) >= 2
