"""Worker Deployment Versioning on the dev server: two builds side by side, pinned changes stay put.

The server is this module's own (``worker.devserver.DEV_DYNAMIC_CONFIG``: an old version
reports drained within seconds instead of minutes). Both builds run the same code under different
build ids, which is all the server looks at: which build ran a task is read from the history
(``WorkflowTaskCompleted.deployment_version``), never from the code.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from temporalio.api.enums.v1 import VersionDrainageStatus
from temporalio.client import Client, WorkflowHandle
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities
from tests import fakes
from tests.fakes import Ledger, RecordingKind
from tests.helpers import OPEN_BUNDLE, start_dev_server, until_phase
from worker.main import describe_deployment, run_worker
from worker.settings import Settings
from workflows.models import Approval, ApprovalResult, ChangeRequest, ChangeResult, Outcome, Phase

pytestmark = pytest.mark.integration

APPROVER = "sre-lead"


@pytest.fixture
def operators() -> str:
    """An approver for the change kept waiting on v1."""
    return f"operators:\n  {APPROVER}: [sre-leads]\n"


@pytest.fixture(scope="module")
async def versioned_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server with the dynamic config ``changeguard dev`` passes (fast drainage status)."""
    env = await start_dev_server()
    yield env
    await env.shutdown()


@asynccontextmanager
async def running(
    client: Client, settings: Settings, audit: AuditActivities
) -> AsyncIterator[None]:
    """Run :func:`worker.main.run_worker` (what ``changeguard worker`` runs) until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_worker(
            client,
            settings,
            stop,
            guardrails=fakes.guardrails(),
            kinds=fakes.kinds(),
            bundle=OPEN_BUNDLE,
            audit=audit,
            max_cached_workflows=0,  # every task replays from history on whichever build gets it
        )
    )
    try:
        yield
    finally:
        stop.set()
        await task


async def until_current(client: Client, version: WorkerDeploymentVersion) -> None:
    """Wait until the server routes new work of the deployment to ``version``."""
    for _ in range(80):
        info = await describe_deployment(client, version.deployment_name)
        if info is not None and info.routing_config.current_deployment_version.build_id == (
            version.build_id
        ):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{version.to_canonical_string()} never became current")


async def builds_of(client: Client, *workflow_ids: str) -> dict[str, set[tuple[str, int]]]:
    """Per workflow, the (build id, versioning behaviour) of every completed workflow task."""
    out: dict[str, set[tuple[str, int]]] = {}
    for workflow_id in workflow_ids:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        out[workflow_id] = {
            (
                e.workflow_task_completed_event_attributes.deployment_version.build_id,
                int(e.workflow_task_completed_event_attributes.versioning_behavior),
            )
            for e in history.events
            if e.HasField("workflow_task_completed_event_attributes")
        }
    return out


def _request(change_id: str, rules: list[dict[str, Any]]) -> ChangeRequest:
    return ChangeRequest.model_validate(
        {
            "change_id": change_id,
            "kind": "recording",
            "summary": "versioning test",
            "requester": "alice",
            "team": "payments",
            "environment": "prod",
            "targets": [{"id": f"{change_id}.t1"}],
            "rollout": {"waves": ["100%"], "bake": "0s"},
            "policy": {"guardrails": rules},
        }
    )


WAITS_FOR_APPROVAL = [
    {"use": "fake-state", "params": {"outcome": "fail"}, "opt_out": {"approvers": ["sre-leads"]}}
]
PROCEEDS = [{"use": "always-pass"}]


async def test_pinned_change_finishes_on_its_build_while_new_ones_go_to_the_next(
    versioned_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities
) -> None:
    """A change waiting for approval on v1 finishes on v1 after v2 is current; v1 then drains."""
    RecordingKind.ledger = Ledger()
    client = versioned_env.client
    deployment = f"cg-{uuid.uuid4().hex[:8]}"
    v1, v2 = (
        Settings.from_env(
            task_queue=task_queue, deployment=deployment, build_id=b, set_current=True
        )
        for b in ("v1", "v2")
    )
    old, new = f"vers-{uuid.uuid4().hex[:6]}-old", f"vers-{uuid.uuid4().hex[:6]}-new"
    async with running(client, v1, audit):
        await until_current(client, _version(v1))  # v1 made itself current once it polled
        waiting = await _start(client, task_queue, old, WAITS_FOR_APPROVAL)
        status = await until_phase(waiting, Phase.AWAITING_APPROVAL)
        assert status.report is not None
        async with running(client, v2, audit):
            await until_current(client, _version(v2))
            fresh = await _start(client, task_queue, new, PROCEEDS)
            assert (await fresh.result()).outcome is Outcome.COMPLETED
            approval = Approval(
                guardrails=["fake-state"],
                approver=APPROVER,
                reason="approved after the upgrade",
                report_hash=status.report.report_hash,
            )
            await waiting.execute_update("approve", approval, result_type=ApprovalResult)
            assert (await waiting.result()).outcome is Outcome.COMPLETED
            pinned = int(VersioningBehavior.PINNED)
            assert await builds_of(client, old, f"{old}/gate-1", new, f"{new}/gate-1") == {
                old: {("v1", pinned)},
                f"{old}/gate-1": {("v1", pinned)},
                new: {("v2", pinned)},
                f"{new}/gate-1": {("v2", pinned)},
            }
            assert sorted(RecordingKind.ledger.applied) == sorted([f"{old}.t1", f"{new}.t1"])
            drained = VersionDrainageStatus.VERSION_DRAINAGE_STATUS_DRAINED
            assert await _drainage(client, deployment, "v1") == drained


def _version(settings: Settings) -> WorkerDeploymentVersion:
    version = settings.deployment_version()
    assert version is not None
    return version


async def _start(
    client: Client, task_queue: str, change_id: str, rules: list[dict[str, Any]]
) -> WorkflowHandle[Any, ChangeResult]:
    return await client.start_workflow(
        "GuardedChange",
        _request(change_id, rules),
        id=change_id,
        task_queue=task_queue,
        result_type=ChangeResult,
    )


async def _drainage(client: Client, deployment: str, build_id: str) -> int:
    """The version's drainage status once it settles (draining → drained), within 30 s."""
    status = 0
    for _ in range(120):
        info = await describe_deployment(client, deployment)
        assert info is not None
        [summary] = [v for v in info.version_summaries if v.deployment_version.build_id == build_id]
        status = int(summary.drainage_status)
        if status == VersionDrainageStatus.VERSION_DRAINAGE_STATUS_DRAINED:
            return status
        await asyncio.sleep(0.25)
    return status
