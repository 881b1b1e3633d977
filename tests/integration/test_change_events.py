"""Change events reach a real HTTP receiver in order, and a sink that is down delays nothing."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities
from activities.change_events import ChangeEventSink
from tests import fakes
from tests.fakes import Ledger, RecordingKind
from tests.servers import EventReceiver as Receiver
from worker.main import build_worker
from workflows.ids import events_id
from workflows.models import ChangeRequest, ChangeResult, Outcome

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROUTING_KEY = "R0UT1NGKEY0000000000000000000000"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def hanging_sink() -> Iterator[str]:
    """A sink that is down the worst way: it takes the connection and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # never accepted: every request waits for its timeout
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v2/change/enqueue"
    finally:
        sock.close()


def _request(prefix: str) -> ChangeRequest:
    return ChangeRequest(
        change_id=f"{prefix}-{uuid.uuid4().hex[:8]}",
        kind="recording",
        summary="Roll out 1.4.2",
        requester="alice",
        team="payments",
        environment="prod",
        targets=[{"id": f"web-0{i}"} for i in range(1, 4)],  # type: ignore[misc]
        rollout={"waves": ["1", "100%"]},  # type: ignore[arg-type]
        policy={"guardrails": [{"use": "always-pass"}]},
    )


def _worker(env: WorkflowEnvironment, tq: str, audit: AuditActivities, sink: Any):  # type: ignore[no-untyped-def]
    return build_worker(
        env.client,
        task_queue=tq,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=audit,
        change_events=sink,
        max_cached_workflows=0,  # every task replays: the event commands are deterministic
    )


async def _run(env: WorkflowEnvironment, tq: str, req: ChangeRequest) -> tuple[ChangeResult, float]:
    started = time.monotonic()
    handle = await env.client.start_workflow(
        "GuardedChange", req, id=req.change_id, task_queue=tq, result_type=ChangeResult
    )
    result = await handle.result()
    return result, time.monotonic() - started


async def test_sink_receives_start_wave_and_outcome_events_in_order(
    dev_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, receiver: Receiver
) -> None:
    """Started, each wave's start and end, then the outcome, in PagerDuty change-event shape."""
    RecordingKind.ledger = Ledger()
    sink = ChangeEventSink(
        url=receiver.url,
        routing_key=ROUTING_KEY,
        source="changeguard-test",
        link=lambda change_id: f"http://ui.test/workflows/{change_id}",
    )
    req = _request("events")
    async with _worker(dev_env, task_queue, audit, sink):
        result, _ = await _run(dev_env, task_queue, req)
        child = dev_env.client.get_workflow_handle(events_id(req.change_id or ""))
        summary = await asyncio.wait_for(child.result(), timeout=30)
    assert result.outcome is Outcome.COMPLETED
    assert summary == "6 delivered, 0 dropped, 0 refused"
    details = [b["payload"]["custom_details"] for b in receiver.bodies]
    assert [(d["event"], d.get("wave")) for d in details] == [
        ("started", None),
        ("wave_started", 1),
        ("wave_finished", 1),
        ("wave_started", 2),
        ("wave_finished", 2),
        ("outcome", None),
    ]
    assert [d["seq"] for d in details] == [1, 2, 3, 4, 5, 6]
    first, last = receiver.bodies[0], receiver.bodies[-1]
    assert first["routing_key"] == ROUTING_KEY
    assert first["payload"]["source"] == "changeguard-test"
    assert first["payload"]["summary"] == (
        f"{req.change_id} started: recording 'Roll out 1.4.2' on 3 target(s) in prod "
        "(team payments, by alice)"
    )
    assert first["links"] == [
        {
            "href": f"http://ui.test/workflows/{req.change_id}",
            "text": f"{req.change_id} in the Temporal Web UI",
        }
    ]
    assert details[1]["first_targets"] == ["web-01"]
    assert last["payload"]["summary"] == f"{req.change_id} completed: applied to 3 target(s)"
    assert (details[-1]["outcome"], details[-1]["applied"]) == ("completed", 3)
    stamps = [datetime.fromisoformat(b["payload"]["timestamp"]) for b in receiver.bodies]
    assert stamps == sorted(stamps) and all(s.tzinfo is not None for s in stamps)
    assert all(len(b["payload"]["summary"]) <= 1024 for b in receiver.bodies)


async def test_a_sink_that_is_down_delays_nothing(
    dev_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities, hanging_sink: str
) -> None:
    """A sink that never answers (30 s per attempt, retried) leaves the change's duration alone."""
    RecordingKind.ledger = Ledger()
    plain, down = _request("nosink"), _request("sinkdown")
    async with _worker(dev_env, f"{task_queue}-plain", audit, None):
        base, base_s = await _run(dev_env, f"{task_queue}-plain", plain)
    sink = ChangeEventSink(url=hanging_sink, routing_key=ROUTING_KEY, timeout=30.0)
    async with _worker(dev_env, task_queue, audit, sink):
        result, down_s = await _run(dev_env, task_queue, down)
        print(f"change events: without a sink {base_s:.2f}s, with the sink down {down_s:.2f}s")
        child = dev_env.client.get_workflow_handle(events_id(down.change_id or ""))
        try:
            described = await child.describe()
            assert described.status is WorkflowExecutionStatus.RUNNING  # still trying to deliver
        finally:
            await child.terminate(reason="test over: the sink stays down")
    assert base.outcome is result.outcome is Outcome.COMPLETED
    # A change that waited for even one delivery attempt would take 30 s longer.
    assert down_s < base_s + 15, f"with the sink down {down_s:.1f}s, without a sink {base_s:.1f}s"
    with pytest.raises(RPCError):  # without a sink no event workflow is started at all
        await dev_env.client.get_workflow_handle(events_id(plain.change_id or "")).describe()
