"""Worker failure: SIGKILL the worker process mid-wave; another worker finishes the change.

Everything here is real and out of process where it matters: the Temporal dev server (``dev_env``),
the demo fleet over HTTP with a slow deploy (``deploy_delay_ms``), and each worker a separate
``python -m cli.main worker`` process. The first worker is killed (SIGKILL: no graceful shutdown, no
heartbeat, no goodbye to the server) while mutations of the second wave are in flight; the server
notices through the mutations' heartbeat timeout and retries them on the second worker, which reads
the fleet's ledger before sending anything (``http-deploy`` on attempt > 1). The fleet's ledger must
show every target deployed exactly once by this change, and nothing reverted.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.testing import WorkflowEnvironment

from demo.fleet import FleetServer
from tests.chaos.processes import WorkerProcess
from tests.helpers import OPEN_BUNDLE
from worker import gctune
from workflows.models import ChangeRequest, ChangeResult, ChangeStatus, Outcome, Phase

HOSTS = 8
DEPLOY_DELAY_MS = 1500
"""Each deploy takes this long on the fleet, so a wave's mutations are in flight long enough."""
KILL_AFTER = 0.5
"""Seconds between seeing mutations start and the SIGKILL: well inside the deploy delay."""
NEW_VERSION = "2.0.0"

T = TypeVar("T")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetServer]:
    """The demo fleet on a free loopback port, with slow deploys."""
    with FleetServer(tmp_path / "fleet.db", port=0, hosts=HOSTS) as server:
        response = httpx.post(
            f"{server.url}/admin/faults", json={"deploy_delay_ms": DEPLOY_DELAY_MS}, trust_env=False
        )
        response.raise_for_status()
        yield server


@pytest.fixture
def spawn(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> Iterator[Callable[[str], WorkerProcess]]:
    """Start worker processes on the test's task queue; every one is killed at teardown."""
    (tmp_path / "operators.yaml").write_text("operators: {}\n")
    # Workers fail closed without a platform bundle: the suite's open one (no platform rules).
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(OPEN_BUNDLE))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "CHANGEGUARD_"))}
    env.update(
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=dev_env.client.namespace,
        CHANGEGUARD_TASK_QUEUE=task_queue,
        CHANGEGUARD_AUDIT_URL=f"sqlite:///{tmp_path / 'audit.db'}",
        CHANGEGUARD_DIRECTORY=f"yaml:{tmp_path / 'operators.yaml'}",
        CHANGEGUARD_POLICY=str(tmp_path / "policy.yaml"),
        CHANGEGUARD_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    started: list[WorkerProcess] = []

    def start(name: str) -> WorkerProcess:
        worker = WorkerProcess(name, env, tmp_path / f"{name}.log")
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()


def _request(fleet: FleetServer) -> ChangeRequest:
    return ChangeRequest(
        change_id=f"chaos-{uuid.uuid4().hex[:10]}",
        kind="http-deploy",
        summary="deploy through a worker crash",
        requester="alice",
        team="web",
        environment="prod",
        targets=[{"id": f"web-{i:02d}"} for i in range(1, HOSTS + 1)],
        params={"base_url": fleet.url, "version": NEW_VERSION},
        rollout={"waves": ["2", "100%"], "max_parallel": 4, "bake": "0s"},
        policy={
            "guardrails": [
                {
                    "use": "change-window",
                    "params": {"timezone": "UTC", "allow": ["Mon-Sun 00:00-24:00"]},
                }
            ]
        },
    )


async def _until(
    probe: Callable[[], Awaitable[T | None]], within: float, what: str, context: Callable[[], str]
) -> T:
    """Poll ``probe`` until it returns a value; fail naming ``what`` and the context."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await probe()
        if value is not None:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {within}s\n{context()}")


MUTATIONS = {"apply_change", "apply_change_many"}
"""A mutation's activity: http-deploy applies a wave in chunks (``apply_change_many``)."""


async def _apply_in_flight(handle: WorkflowHandle[Any, Any]) -> int | None:
    """How many mutation activities a worker is running now (None if none)."""
    description = await handle.describe()
    running = [
        a
        for a in description.raw_description.pending_activities
        if a.activity_type.name in MUTATIONS
        and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
    ]
    return len(running) or None


async def _get(fleet: FleetServer, path: str) -> list[dict[str, Any]]:
    """GET a list from the fleet (its ledger, its hosts)."""
    async with httpx.AsyncClient(base_url=fleet.url, trust_env=False, timeout=10) as client:
        response = await client.get(path)
    response.raise_for_status()
    entries: list[dict[str, Any]] = response.json()
    return entries


async def _retried_applies(handle: WorkflowHandle[Any, Any]) -> dict[str, str]:
    """Activity id → worker identity of mutations whose final attempt was not the first."""
    scheduled: dict[int, str] = {}
    retried = {}
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name in MUTATIONS:
                scheduled[event.event_id] = attrs.activity_id
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attrs_started = event.activity_task_started_event_attributes
            if attrs_started.scheduled_event_id in scheduled and attrs_started.attempt > 1:
                retried[scheduled[attrs_started.scheduled_event_id]] = attrs_started.identity
    return retried


@pytest.mark.timeout(90)
async def test_sigkilled_worker_mid_wave_deploys_each_target_exactly_once(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    fleet: FleetServer,
    spawn: Callable[[str], WorkerProcess],
) -> None:
    """A worker SIGKILLed mid-wave: a second worker completes the change, each host deployed once."""
    first = spawn("worker-1")
    await first.ready()
    request = _request(fleet)
    handle = await dev_env.client.start_workflow(
        "GuardedChange",
        request,
        id=str(request.change_id),  # _request always sets it
        task_queue=task_queue,
        result_type=ChangeResult,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )
    workers = [first]

    def logs() -> str:
        return "\n".join(w.tail() for w in workers)

    async def second_wave_in_flight() -> int | None:
        status = await handle.query("status", result_type=ChangeStatus)
        if status.phase is not Phase.EXECUTING or len(status.waves) < 2:
            return None
        if status.waves[1].state != "applying":
            return None
        return await _apply_in_flight(handle)

    in_flight = await _until(second_wave_in_flight, 30, "wave 2's mutations in flight", logs)
    # Let the deploys reach the fleet (they land DEPLOY_DELAY_MS later): the worker then dies
    # with effects under way that it will never report, the case idempotency keys are for.
    await asyncio.sleep(KILL_AFTER)
    first.kill()
    killed_at = time.monotonic()
    prefix = f"{request.change_id}:apply:"
    landed_before_kill = [
        e for e in await _get(fleet, "/deploys") if e["idempotency_key"].startswith(prefix)
    ]
    assert len(landed_before_kill) < HOSTS, "the kill came after the whole rollout"

    second = spawn("worker-2")
    workers.append(second)
    await second.ready()
    try:
        result = await asyncio.wait_for(handle.result(), timeout=60)
    except TimeoutError:
        status = await handle.query("status", result_type=ChangeStatus)
        raise AssertionError(
            f"the change did not finish within 60 s of the kill: {status.phase.value}: "
            f"{status.message}\n{logs()}"
        ) from None
    recovery = time.monotonic() - killed_at

    targets = [t.id for t in request.targets]
    assert (result.outcome, sorted(result.applied), result.reverted) == (
        Outcome.COMPLETED,
        targets,
        [],
    ), f"{result.message}\n{logs()}"
    ledger = [
        e
        for e in await _get(fleet, "/deploys")
        if e["idempotency_key"].startswith(f"{request.change_id}:")
    ]
    per_key = collections.Counter(e["idempotency_key"] for e in ledger)
    assert per_key == {f"{prefix}{t}": 1 for t in targets}, "exactly one apply per host, no revert"
    assert sorted(e["host"] for e in ledger) == targets
    hosts = await _get(fleet, "/hosts")
    assert {h["id"]: h["version"] for h in hosts} == {t: NEW_VERSION for t in targets}
    # The kill really hit running mutations: the server retried them on the second worker.
    retried = await _retried_applies(handle)
    assert retried, f"no mutation was retried after the kill ({in_flight} were in flight)"
    on_second = {activity: f"{second.proc.pid}@" for activity in retried}
    assert {a: who[: len(on_second[a])] for a, who in retried.items()} == on_second
    found_late = second.log.read_text(errors="replace").count("already applied by an earlier")
    print(
        f"\n{in_flight} mutation(s) in flight at the kill, {len(landed_before_kill)} landed before "
        f"it; retried on worker-2: {sorted(retried)}, {found_late} of them found already applied "
        f"in the ledger; finished {recovery:.1f}s after the kill"
    )


@pytest.mark.timeout(60)
async def test_worker_process_tunes_its_garbage_collector_once_started(
    spawn: Callable[[str], WorkerProcess],
) -> None:
    """`changeguard worker` freezes its start-up objects and raises the GC thresholds (gctune)."""
    worker = spawn("worker-gc")
    await worker.ready()
    lines = [
        json.loads(line) for line in worker.log.read_text().splitlines() if line.startswith("{")
    ]
    tuned = [line for line in lines if line.get("event") == "garbage collector tuned"]
    assert len(tuned) == 1, worker.tail()
    # Start-up leaves well over 10,000 long-lived objects (modules, the SDK, pydantic schemas).
    assert tuned[0]["frozen_objects"] > 10_000, tuned[0]
    expected = [gctune.YOUNG_THRESHOLD, gctune.OLDER_THRESHOLD, gctune.OLDER_THRESHOLD]
    assert tuned[0]["thresholds"] == expected, tuned[0]
