"""``changeguard status --json`` tells a stalled mutation from a suspicious one, end to end.

Real parts: the dev server, a worker in a process of its own (this module run as ``python -m
tests.integration.test_liveness``, registering the ``liveness-probe`` kind below), and the CLI as a
process. One change's mutation checkpoints once and then keeps heartbeating without progress: it
reads **stalled** once the kind's stall time passes. Another's keeps progressing: healthy. Then the
worker is frozen (SIGSTOP), so heartbeats stop: the progressing mutation reads **suspicious** once
its last heartbeat is older than two intervals, with how long ago, until the heartbeat timeout
(three intervals) has the server retry it. The frozen worker cannot answer the ``status`` query
either (the workflow sits in its sticky cache): status says so and still shows the pending work.

Before the worker capped its heartbeat throttling (``HEARTBEAT_THROTTLE``), the SDK sent the server
one heartbeat per 0.8 x the heartbeat timeout (2.4 intervals), and the healthy mutation here read
suspicious and stalled by turns: the "healthy for several intervals" part proves the cap.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import BaseModel
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import PauseActivityRequest, UnpauseActivityRequest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.kinds.base import ChangeKind, MutationOptions, Progress
from tests.chaos.processes import WorkerProcess
from tests.integration.conftest import Cli
from workflows.models import (
    ApplyResult,
    ChangeResult,
    ChangeStatus,
    Duration,
    Phase,
    Target,
    TargetState,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

INTERVAL_S = 10.0
"""The probe's heartbeat interval: suspicious after 20 s of silence, retried after 30 s (a status
call during the freeze waits up to ``QUERY_TIMEOUT`` for a query nobody answers)."""
STALL_S = 3.0


class ProbeParams(BaseModel):
    mode: Literal["stall", "progress"]
    heartbeat_interval: Duration = timedelta(seconds=INTERVAL_S)
    stall_after: Duration = timedelta(seconds=STALL_S)


class Step(BaseModel):
    n: int = 0
    resumed_from: int | None = None


class LivenessProbe(ChangeKind[ProbeParams]):
    """A mutation that runs until cancelled: progressing every 0.2 s, or stuck after one step."""

    name = "liveness-probe"
    params_model = ProbeParams
    checkpoint_model: ClassVar[type[BaseModel] | None] = Step

    def options(self, params: ProbeParams) -> MutationOptions:
        return MutationOptions(
            start_to_close=timedelta(minutes=10),
            heartbeat_interval=params.heartbeat_interval,
            stall_after=params.stall_after,
        )

    async def apply(
        self,
        params: ProbeParams,
        target: Target,
        *,
        idempotency_key: str,
        progress: Progress[Step] | None = None,
    ) -> ApplyResult:
        assert progress is not None, "changeguard passes every mutation its progress handle"
        resumed = progress.resumed_from.n if progress.resumed_from is not None else None
        n = resumed or 0
        while True:  # the background heartbeat keeps beating in both modes
            if params.mode == "progress" or n == 0:
                n += 1
                progress.checkpoint(Step(n=n, resumed_from=resumed), stage=f"step {n}")
            await asyncio.sleep(0.2)

    async def revert_if_applied(
        self, params: ProbeParams, target: Target, *, applied_key: str, idempotency_key: str
    ) -> ApplyResult:
        return ApplyResult(target_id=target.id, applied=False, detail="nothing to undo")

    async def describe(self, params: ProbeParams, target: Target) -> TargetState:
        return TargetState(target_id=target.id, reachable=True, healthy=True)


@pytest.fixture
def spawn(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> Iterator[Callable[[], WorkerProcess]]:
    """Start a worker process (with the probe kind) on the test's task queue; killed at teardown."""
    (tmp_path / "operators.yaml").write_text("operators: {}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "CHANGEGUARD_"))}
    env.update(
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
        TEMPORAL_NAMESPACE=dev_env.client.namespace,
        CHANGEGUARD_TASK_QUEUE=task_queue,
        CHANGEGUARD_AUDIT_URL=f"sqlite:///{tmp_path / 'audit.db'}",
        CHANGEGUARD_DIRECTORY=f"yaml:{tmp_path / 'operators.yaml'}",
        CHANGEGUARD_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    started: list[WorkerProcess] = []

    def start() -> WorkerProcess:
        worker = WorkerProcess(
            "worker",
            env,
            tmp_path / "worker.log",
            module=("tests.integration.test_liveness",),
            ready_marker="worker polling",
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()  # SIGKILL ends a stopped process too


async def start(
    dev_env: WorkflowEnvironment, task_queue: str, mode: str
) -> WorkflowHandle[Any, ChangeResult]:
    change_id = f"live-{mode}-{uuid.uuid4().hex[:8]}"
    return await dev_env.client.start_workflow(
        "GuardedChange",
        {
            "change_id": change_id,
            "kind": "liveness-probe",
            "summary": f"a mutation that keeps running ({mode})",
            "requester": "alice",
            "team": "data",
            "environment": "prod",
            "targets": [{"id": f"db-{mode}"}],
            "params": {"mode": mode},
            "rollout": {"waves": ["100%"], "max_parallel": 1},
        },
        id=change_id,
        task_queue=task_queue,
        result_type=ChangeResult,
    )


async def pending(cli: Cli, change_id: str) -> dict[str, Any] | None:
    """The change's pending apply_change as ``status --json`` shows it (None if none).

    The status's own ``message`` comes along as ``status_message``.
    """
    res = await cli("status", change_id, "--json")
    assert res.code == 0, res.stderr
    doc = res.json()
    work = [w for w in doc["pending"] if w["activity"] == "apply_change"]
    return {**work[0], "status_message": doc["message"]} if work else None


async def until(
    cli: Cli, change_id: str, ready: Callable[[dict[str, Any]], bool], *, within: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Poll status until ``ready`` holds for the pending mutation; also every view seen before."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        work = await pending(cli, change_id)
        if work is not None:
            if ready(work):
                return work, seen
            seen.append(work)
        await asyncio.sleep(0.3)
    raise AssertionError(f"{change_id}: never ready within {within}s; last views: {seen[-3:]}")


async def test_status_marks_a_stuck_mutation_stalled_and_a_silent_one_suspicious(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    cli: Cli,
    spawn: Callable[[], WorkerProcess],
) -> None:
    """Beats without progress: stalled; no beats (worker frozen): suspicious, with how long ago."""
    worker = spawn()
    await worker.ready()
    stuck = await start(dev_env, task_queue, "stall")
    moving = await start(dev_env, task_queue, "progress")
    try:
        stalled, before = await until(cli, stuck.id, lambda w: w["stalled"], within=40)
        assert (stalled["state"], stalled["attempt"], stalled["suspicious"]) == (
            "STARTED",
            1,
            False,
        )
        assert (stalled["target"], stalled["stage"], stalled["progress"]) == (
            "db-stall",
            "step 1",
            {"n": 1, "resumed_from": None},
        )
        assert stalled["unchanged_for_s"] >= STALL_S  # over it, rounded to 0.1 s (3.04 -> 3.0)
        assert stalled["last_heartbeat_s_ago"] <= 2 * INTERVAL_S, "it still beats"
        assert stalled["note"].startswith(
            "stalled: heartbeats continue but progress has not changed for "
        )
        assert not any(w["suspicious"] for w in before), before

        # Healthy, and for long enough to span several heartbeat intervals: never suspicious.
        # Healthy for three intervals: the server sees every beat (no 2.4-interval throttle).
        healthy: list[dict[str, Any]] = []
        ends = time.monotonic() + 3 * INTERVAL_S
        while time.monotonic() < ends or healthy[-1]["last_heartbeat_s_ago"] is None:
            work = await pending(cli, moving.id)
            assert work is not None
            healthy.append(work)
            await asyncio.sleep(1.0)
        views = [
            (w["last_heartbeat_s_ago"], w["unchanged_for_s"], w["suspicious"], w["stalled"])
            for w in healthy
        ]
        assert [v[2:] for v in views] == [(False, False)] * len(views), views
        assert all(v[0] is not None and v[0] <= INTERVAL_S + 2 for v in views), views
        assert all(v[1] is not None and v[1] <= 2 for v in views), views
        assert healthy[-1]["progress"]["n"] > healthy[0]["progress"]["n"]

        os.kill(worker.proc.pid, signal.SIGSTOP)  # a hung worker: nothing beats any more
        frozen_at = time.monotonic()
        silent, _ = await until(cli, moving.id, lambda w: w["suspicious"], within=3 * INTERVAL_S)
        assert silent["state"] == "STARTED"
        assert silent["status_message"].startswith("no worker answered the status query")
        assert 2 * INTERVAL_S < silent["last_heartbeat_s_ago"] <= 3 * INTERVAL_S + 2
        assert silent["last_heartbeat_s_ago"] <= time.monotonic() - frozen_at + INTERVAL_S
        assert silent["stalled"] is False, "silence is suspicious, not stalled"
        assert silent["note"].startswith("suspicious: no heartbeat for "), silent["note"]
        assert silent["note"].endswith(
            f"s (beats every {INTERVAL_S:g}s; retried after {3 * INTERVAL_S:g}s)"
        ), silent["note"]
    finally:
        worker.kill()
        for handle in (stuck, moving):
            await handle.terminate("test done")


def _activity(handle: WorkflowHandle[Any, Any], dev_env: WorkflowEnvironment) -> dict[str, Any]:
    return {
        "namespace": dev_env.client.namespace,
        "execution": WorkflowExecution(workflow_id=handle.id),
        "type": "apply_change",
        "identity": "oscar",
    }


async def test_an_activity_pause_stops_the_mutation_and_unpause_resumes_it_from_its_checkpoint(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    cli: Cli,
    spawn: Callable[[], WorkerProcess],
) -> None:
    """An activity pause is no cancel: the attempt stops, nothing compensates, unpause resumes.

    The attempt ends with the retryable MutationPaused; the server starts no new attempt while the
    activity is paused; the change stays Executing with nothing reverted; the attempt after the
    unpause continues from the checkpoint the paused one left.
    """
    worker = spawn()
    await worker.ready()
    moving = await start(dev_env, task_queue, "progress")
    service = dev_env.client.workflow_service
    try:
        await until(cli, moving.id, lambda w: w["progress"].get("n", 0) >= 10, within=40)
        await service.pause_activity(
            PauseActivityRequest(**_activity(moving, dev_env), reason="maintenance window")
        )
        paused, _ = await until(
            cli,
            moving.id,
            lambda w: w["paused"] and "MutationPaused" in w["last_failure"],
            within=40,
        )
        assert (paused["state"], paused["suspicious"], paused["stalled"]) == (
            "PAUSED",
            False,
            False,
        )
        assert "paused by an operator" in paused["last_failure"]
        at_pause, attempt = paused["progress"]["n"], paused["attempt"]
        await asyncio.sleep(2)  # the attempt really stopped: no progress, no new attempt
        still = await pending(cli, moving.id)
        assert still is not None
        assert (still["state"], still["attempt"], still["progress"]["n"]) == (
            "PAUSED",
            attempt,
            at_pause,
        )
        status = await moving.query("status", result_type=ChangeStatus)
        assert (status.phase, status.reverted) == (Phase.EXECUTING, []), "a pause is no cancel"

        await service.unpause_activity(UnpauseActivityRequest(**_activity(moving, dev_env)))
        resumed, _ = await until(
            cli,
            moving.id,
            lambda w: w["state"] == "STARTED" and w["progress"].get("resumed_from") is not None,
            within=40,
        )
        assert resumed["attempt"] == attempt >= 2
        assert resumed["progress"]["resumed_from"] == at_pause, resumed["progress"]
        assert resumed["progress"]["n"] > at_pause
        scheduled = [
            e.activity_task_scheduled_event_attributes
            async for e in moving.fetch_history_events()
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and e.activity_task_scheduled_event_attributes.activity_type.name == "apply_change"
        ]
        timeouts = [
            (a.heartbeat_timeout.ToTimedelta(), a.start_to_close_timeout.ToTimedelta())
            for a in scheduled
        ]
        assert timeouts == [(timedelta(seconds=3 * INTERVAL_S), timedelta(minutes=10))], (
            "the kind's options: three intervals, its own start-to-close"
        )
    finally:
        worker.kill()
        await moving.terminate("test done")


async def _worker_main() -> None:
    """A worker whose kinds include the probe."""
    from activities.kinds.base import default_registry
    from tests.helpers import OPEN_BUNDLE
    from worker.client import connect
    from worker.main import build_worker
    from worker.settings import Settings

    kinds = default_registry()
    kinds.register(LivenessProbe)
    settings = Settings.from_env()
    client = await connect(settings)
    async with build_worker(client, settings, bundle=OPEN_BUNDLE, kinds=kinds):
        print("worker polling", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_worker_main())
