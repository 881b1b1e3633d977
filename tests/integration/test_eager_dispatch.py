"""Eager dispatch (worker/eager.py) on the dev server: gate checks and compensations skip the queue.

The server counts every activity it hands back eagerly in the answer to a workflow task's
completion (``activity_eager_execution``, per task queue, on its Prometheus endpoint). The tests
compare that count with the activities the change's histories scheduled, by priority: those of a
gate or a compensation (keys 1 and 2) are all eager, a mutation (key 4) never is.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities
from tests import fakes
from tests.fakes import Ledger, RecordingKind
from tests.helpers import start_dev_server
from worker.main import build_worker
from worker.settings import Settings
from workflows import names
from workflows.models import ChangeRequest, ChangeResult, Outcome
from workflows.priorities import COMPENSATION, GATE, MUTATION

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TARGETS = 12
FLUSH = 2.0
"""Longer than the dev server takes to publish a counter's new value (it lagged ~1-2 s here)."""
EAGER_KEYS = {COMPENSATION.priority_key, GATE.priority_key}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
async def eager_env() -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    """A dev server started as ``changeguard dev`` starts it, with its metrics on a known port."""
    port = _free_port()
    env = await start_dev_server("--metrics-port", str(port))
    yield env, f"http://127.0.0.1:{port}/metrics"
    await env.shutdown()


async def _eager_count(metrics_url: str, task_queue: str) -> int:
    """How many activities of ``task_queue`` the server has dispatched eagerly so far."""
    async with httpx.AsyncClient(trust_env=False, timeout=10) as http:
        text = (await http.get(metrics_url)).text
    label = re.sub(r"[^A-Za-z0-9_]", "_", task_queue)  # the server's metric tags: "-" becomes "_"
    total = 0
    for line in text.splitlines():
        if line.startswith("activity_eager_execution{") and f'taskqueue="{label}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


async def _settled_count(metrics_url: str, task_queue: str, *, until: int, within: float) -> int:
    """The eager count once the server has published it.

    The dev server publishes a counter's new value a second or two late: wait until the count
    reaches ``until`` (at most ``within`` seconds), then one publication more for any count beyond.
    """
    for _ in range(int(within / 0.25)):
        if await _eager_count(metrics_url, task_queue) >= until:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(FLUSH)
    return await _eager_count(metrics_url, task_queue)


async def _scheduled(client: Client, workflow_id: str) -> Counter[tuple[str, int]]:
    """(activity type, priority key) of every activity the workflow and its children scheduled."""
    counts: Counter[tuple[str, int]] = Counter()
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            counts[(attrs.activity_type.name, attrs.priority.priority_key)] += 1
        elif event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            child = event.child_workflow_execution_started_event_attributes.workflow_execution
            counts += await _scheduled(client, child.workflow_id)
    return counts


def _request(**params: object) -> ChangeRequest:
    """Twelve targets in one wave, all at once: one workflow task schedules twelve mutations."""
    return ChangeRequest(
        change_id=f"eager-{uuid.uuid4().hex[:8]}",
        kind="recording",
        summary="Roll out 1.4.2",
        requester="alice",
        team="payments",
        environment="prod",
        targets=[{"id": f"web-{i:02d}"} for i in range(1, TARGETS + 1)],  # type: ignore[misc]
        rollout={"waves": ["100%"], "max_parallel": TARGETS},  # type: ignore[arg-type]
        policy={"guardrails": [{"use": "always-pass"}, {"use": "fake-health"}]},
        params=params,
    )


async def _run(
    env: WorkflowEnvironment, audit: AuditActivities, settings: Settings, req: ChangeRequest
) -> ChangeResult:
    async with build_worker(
        env.client,
        settings,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=audit,
    ):
        result: ChangeResult = await env.client.execute_workflow(
            "GuardedChange",
            req,
            id=req.change_id,
            task_queue=settings.task_queue,
            result_type=ChangeResult,
        )
    return result


async def test_checks_and_compensations_run_eagerly_mutations_never(
    eager_env: tuple[WorkflowEnvironment, str], task_queue: str, audit: AuditActivities
) -> None:
    """A rolled-back change: its gate and compensations run eagerly, its twelve mutations do not.

    On a quiet worker every eligible activity is dispatched eagerly; a mutation dispatched eagerly
    would push the count past them (twelve are scheduled at once).
    """
    env, metrics = eager_env
    RecordingKind.ledger = Ledger()
    req = _request(fail_apply=["web-12"])  # web-12 is refused: the eleven others are reverted
    result = await _run(env, audit, Settings.from_env(task_queue=task_queue), req)
    assert result.outcome is Outcome.ROLLED_BACK, result

    scheduled = await _scheduled(env.client, req.change_id)
    eligible = sum(n for (_, key), n in scheduled.items() if key in EAGER_KEYS)
    assert scheduled[(names.RUN_CHECK, GATE.priority_key)] >= 2  # the gate's two checks
    assert scheduled[(names.REVERT_CHANGE, COMPENSATION.priority_key)] == TARGETS
    assert scheduled[(names.APPLY_CHANGE, MUTATION.priority_key)] == TARGETS
    eager = await _settled_count(metrics, task_queue, until=eligible, within=10)
    assert eager == eligible, (eager, scheduled)


async def test_eager_dispatch_off_when_set_to_zero(
    eager_env: tuple[WorkflowEnvironment, str], task_queue: str, audit: AuditActivities
) -> None:
    """``CHANGEGUARD_EAGER_ACTIVITIES=0``: the same change runs with every activity queued."""
    env, metrics = eager_env
    RecordingKind.ledger = Ledger()
    settings = Settings.from_env(
        env={
            **os.environ,
            "CHANGEGUARD_EAGER_ACTIVITIES": "0",
            "CHANGEGUARD_TASK_QUEUE": task_queue,
        }
    )
    result = await _run(env, audit, settings, _request())
    assert result.outcome is Outcome.COMPLETED, result
    assert sorted(RecordingKind.ledger.applied) == [f"web-{i:02d}" for i in range(1, TARGETS + 1)]
    assert await _settled_count(metrics, task_queue, until=1, within=1) == 0
