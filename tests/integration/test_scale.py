"""Scale: a change over 2,000 targets completes on the dev server with every history small.

One ``http-deploy`` change over a 2,000-host demo fleet, waves 1 / 10 % / 100 %, 50 mutations at a
time, no bake and an always-open change window as the policy. Waves larger than ``BATCH_SIZE`` run in
``TargetBatch`` children, so no history grows with the number of targets: every workflow of the
change (``GuardedChange``, its ``GuardrailGate`` children, its ``TargetBatch`` children) must stay
under 10,000 events, far from Temporal's 51,200-event cap. The fleet's ledger must show each host
deployed exactly once.

The fleet runs in a process of its own: every deploy holds its one lock while it charges simulated
traffic to *every* host (a scan of the whole hosts table, ~18 ms at 2,000 hosts) and commits to
SQLite, and in the test's process it would starve the worker of the interpreter lock (heartbeats
missed, attempts retried). A wave's batches run at once in lanes sharing ``max_parallel``, and
``http-deploy`` applies up to 25 hosts per ``apply_change_many`` activity, so the change makes about
half an event per target; no history event (inputs, results, the status) may reach 1 MB.
"""

from __future__ import annotations

import asyncio
import collections
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.testing import WorkflowEnvironment

from worker.main import build_worker
from worker.settings import Settings
from workflows.models import ChangeRequest, ChangeResult, Outcome
from workflows.wave_apply import BATCH_SIZE

TARGETS = 2000
MAX_EVENTS = 10_000
NEW_VERSION = "3.0.0"
ROOT = Path(__file__).resolve().parents[2]


FLEET_SCRIPT = """
import sys
from pathlib import Path
from demo.fleet import FleetServer
server = FleetServer(Path(sys.argv[1]), port=0, hosts=int(sys.argv[2])).start()
print(server.url, flush=True)
sys.stdin.read()  # serve until the test closes our stdin (or kills us)
server.stop()
"""


@dataclass
class Fleet:
    """The demo fleet running in a process of its own."""

    url: str


@pytest.fixture
def big_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """The demo fleet with 2,000 hosts (``web-01`` … ``web-2000``) in a separate process.

    Out of process so the fleet's CPU-bound deploys do not compete with the worker for one GIL.
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", FLEET_SCRIPT, str(tmp_path / "fleet.db"), str(TARGETS)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "fleet.log").open("wb"),
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        url = proc.stdout.readline().decode().strip() if ready else ""
        assert url.startswith("http://127.0.0.1:"), (
            f"the fleet did not start: {(tmp_path / 'fleet.log').read_text()[-2000:]}"
        )
        yield Fleet(url)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _request(fleet: Fleet) -> ChangeRequest:
    return ChangeRequest(
        change_id=f"scale-{uuid.uuid4().hex[:10]}",
        kind="http-deploy",
        summary=f"deploy {NEW_VERSION} to {TARGETS} hosts",
        requester="alice",
        team="web",
        environment="prod",
        targets=[{"id": f"web-{i:02d}"} for i in range(1, TARGETS + 1)],
        params={"base_url": fleet.url, "version": NEW_VERSION},
        rollout={"waves": ["1", "10%", "100%"], "max_parallel": 50, "bake": "0s"},
        policy={
            "guardrails": [
                {
                    "use": "change-window",
                    "params": {"timezone": "UTC", "allow": ["Mon-Sun 00:00-24:00"]},
                }
            ]
        },
    )


@dataclass
class Histories:
    """What the histories of a change's workflows say."""

    sizes: dict[str, int] = field(default_factory=dict)
    """Event count by workflow id."""
    size_bytes: dict[str, int] = field(default_factory=dict)
    """Encoded size of each history, by workflow id."""
    largest_event: tuple[int, str] = (0, "")
    """The largest single event (encoded bytes) and where it is."""
    retries: list[str] = field(default_factory=list)
    """One line per activity whose final attempt was not its first, with the last failure."""


async def _histories(client: Client, root: str) -> Histories:
    """Read ``root``'s history and every child's it started, recursively."""
    found = Histories()
    todo = [root]
    while todo:
        workflow_id = todo.pop()
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        found.sizes[workflow_id] = len(history.events)
        found.size_bytes[workflow_id] = 0
        for event in history.events:
            size = event.ByteSize()
            found.size_bytes[workflow_id] += size
            where = f"{workflow_id} event {event.event_id} ({EventType.Name(event.event_type)})"
            found.largest_event = max(found.largest_event, (size, where))
            if event.HasField("child_workflow_execution_started_event_attributes"):
                child = event.child_workflow_execution_started_event_attributes
                todo.append(child.workflow_execution.workflow_id)
            elif event.HasField("activity_task_started_event_attributes"):
                started = event.activity_task_started_event_attributes
                if started.attempt > 1:
                    found.retries.append(
                        f"{workflow_id} event {started.scheduled_event_id}: attempt "
                        f"{started.attempt} after {started.last_failure.message}"
                    )
    return found


async def _listed(client: Client, change_id: str, expected: set[str]) -> dict[str, str]:
    """Workflow id → type of every workflow whose id starts with the change id (visibility).

    Visibility is eventually consistent: poll (bounded) until every workflow the histories name is
    listed.
    """
    query = f"WorkflowId STARTS_WITH '{change_id}'"
    listed: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = {wf.id: wf.workflow_type async for wf in client.list_workflows(query)}
        if expected <= set(listed):
            return listed
        await asyncio.sleep(0.5)
    raise AssertionError(f"visibility lists {len(listed)} of {len(expected)} workflows: {query}")


async def _get(fleet: Fleet, path: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=fleet.url, trust_env=False, timeout=60) as client:
        response = await client.get(path)
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()
    return rows


@pytest.mark.timeout(300)
async def test_change_over_2000_targets_keeps_every_history_under_10000_events(
    dev_env: WorkflowEnvironment, task_queue: str, big_fleet: Fleet, tmp_path: Path
) -> None:
    """2,000 targets complete, each deployed once, and no workflow history reaches 10,000 events."""
    (tmp_path / "operators.yaml").write_text("operators: {}\n")
    settings = Settings.from_env(
        env={},
        task_queue=task_queue,
        audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
        directory=f"yaml:{tmp_path / 'operators.yaml'}",
    )
    request = _request(big_fleet)
    client = dev_env.client
    started = time.monotonic()
    async with build_worker(client, settings):
        handle = await client.start_workflow(
            "GuardedChange",
            request,
            id=request.change_id,
            task_queue=task_queue,
            result_type=ChangeResult,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
        result = await handle.result()
    wall = time.monotonic() - started

    targets = [t.id for t in request.targets]
    assert (result.outcome, len(result.applied), result.reverted) == (
        Outcome.COMPLETED,
        TARGETS,
        [],
    ), result.message
    assert sorted(result.applied) == sorted(targets)

    prefix = f"{request.change_id}:apply:"
    ledger = [e for e in await _get(big_fleet, "/deploys") if e["idempotency_key"]]
    per_key = collections.Counter(e["idempotency_key"] for e in ledger)
    assert per_key == {f"{prefix}{t}": 1 for t in targets}, "exactly one deploy per host"
    hosts = await _get(big_fleet, "/hosts")
    assert collections.Counter(h["version"] for h in hosts) == {NEW_VERSION: TARGETS}

    histories = await _histories(client, request.change_id)
    sizes = histories.sizes
    listed = await _listed(client, request.change_id, set(sizes))
    assert set(listed) == set(sizes), "visibility lists a workflow no history started"
    batches = TARGETS // BATCH_SIZE  # wave 1 (1 target) runs inline; waves 2 and 3 in batches
    assert collections.Counter(listed.values()) == {
        "GuardedChange": 1,
        "GuardrailGate": 3,  # the full gate, then a re-check before waves 2 and 3
        "TargetBatch": batches,
    }
    assert histories.largest_event[0] < 1_000_000, f"an event of 1 MB: {histories.largest_event}"
    too_big = {wf: n for wf, n in sizes.items() if n >= MAX_EVENTS}
    assert not too_big, f"histories of {MAX_EVENTS} events or more: {too_big}"
    largest = max(sizes, key=sizes.__getitem__)
    print(
        f"\n{TARGETS} targets in {wall:.1f}s ({TARGETS / wall:.0f} deploys/s); "
        f"{len(sizes)} workflows, {sum(sizes.values())} events "
        f"({sum(sizes.values()) / TARGETS:.2f} per target); max_history_events={sizes[largest]} "
        f"({listed[largest]} {largest}); GuardedChange {sizes[request.change_id]} events; "
        f"{len(histories.retries)} activities retried; largest history "
        f"{max(histories.size_bytes.values()) / 1e6:.2f} MB, largest event "
        f"{histories.largest_event[0] / 1e3:.0f} kB ({histories.largest_event[1]})"
    )
    for line in histories.retries[:20]:
        print(f"  retried: {line}")
