"""A change whose workflow task is being retried: our clients wait the server's refusal out.

The server refuses queries and updates as not ready meanwhile; every client of ours retries for a
bounded time, then says so plainly.

The server answers ``FAILED_PRECONDITION`` / ``WorkflowNotReadyFailure`` ("Workflow Task in failed
state") while a run's latest workflow task failed and its next attempt has not completed. A burst
of large signals causes it for a moment (the server force-closes a task to flush them; see
``test_hostile_input.py``'s megabyte test); a worker that fails every attempt causes it for good.
Here a workflow standing in for ``GuardedChange`` (its ``status`` query and ``abort`` update under
the real names) fails its task until the test lets it through: the refusal is the real server's.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from temporalio import workflow
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

import changeguard
from changeguard.client import not_ready, while_not_ready
from tests.integration.conftest import Cli
from workflows.models import ChangeStatus, OperatorAction, OperatorActionResult, Phase

pytestmark = pytest.mark.integration

WEDGED = {"on": True}
"""While on, every task of :class:`WedgedChange` fails (an unsandboxed worker shares this dict)."""


@workflow.defn(name="WedgedChange")
class WedgedChange:
    """Fails its workflow task while :data:`WEDGED` is on; then waits for ``abort``."""

    def __init__(self) -> None:
        self.aborted = False

    @workflow.run
    async def run(self) -> str:
        if WEDGED["on"]:
            raise RuntimeError("wedged on purpose: this task fails until the test lets it through")
        await workflow.wait_condition(lambda: self.aborted)
        return "aborted"

    @workflow.query(name="status")
    def status(self) -> ChangeStatus:
        return ChangeStatus(change_id=workflow.info().workflow_id, kind="k", phase=Phase.EXECUTING)

    @workflow.update(name="abort")
    def abort(self, action: OperatorAction) -> OperatorActionResult:
        self.aborted = True
        return OperatorActionResult(phase=Phase.ABORTED, message=f"aborted by {action.operator}")


@pytest.fixture
async def wedged(
    dev_env: WorkflowEnvironment, task_queue: str
) -> WorkflowHandle[WedgedChange, str]:
    """A running ``WedgedChange`` whose task has failed at least twice (the server's failed state)."""
    WEDGED["on"] = True
    client: Client = dev_env.client
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[WedgedChange],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        handle = await client.start_workflow(
            WedgedChange.run,
            id=f"wedged-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            # sdk-core reports only a task's first failure; later attempts time out instead, and
            # the server may hold an update until one does: short attempts keep the tests short.
            task_timeout=timedelta(seconds=1),
        )
        for _ in range(100):
            attempt = (await handle.describe()).raw_description.pending_workflow_task.attempt
            if attempt >= 3:
                break
            await asyncio.sleep(0.1)
        assert attempt >= 3, "the workflow task never failed twice"
        yield handle
        WEDGED["on"] = False
        if (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
            await handle.terminate("end of test")


async def test_the_server_refuses_a_wedged_change_as_not_ready(
    wedged: WorkflowHandle[WedgedChange, str],
) -> None:
    with pytest.raises(RPCError) as refused:
        await wedged.execute_update(
            WedgedChange.abort, OperatorAction(operator="oscar", reason="now")
        )
    assert not_ready(refused.value), refused.value
    assert "failed state" in refused.value.message


async def test_an_update_waits_out_a_retried_task_and_is_applied_once(
    wedged: WorkflowHandle[WedgedChange, str],
    dev_env: WorkflowEnvironment,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # How soon the server runs the task again is its own business (~6 s here): wait for it.
    monkeypatch.setattr(changeguard.client, "NOT_READY_WAIT", 60.0)
    client = changeguard.Client(
        dev_env.client, changeguard.Settings.from_env(task_queue=task_queue)
    )
    change = client.get(wedged.id)
    loop = asyncio.get_running_loop()
    loop.call_later(1.0, WEDGED.update, {"on": False})  # the next attempt of the task succeeds

    result = await change.abort(operator="oscar", reason="stop it")

    assert result.message == "aborted by oscar"
    assert await wedged.result() == "aborted"
    assert (await change.status()).phase is Phase.EXECUTING  # the query answers again


async def test_a_lasting_refusal_is_raised_as_the_servers_after_the_wait(
    wedged: WorkflowHandle[WedgedChange, str],
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RPCError) as refused:
        await while_not_ready(
            lambda: wedged.execute_update(
                WedgedChange.abort, OperatorAction(operator="oscar", reason="now")
            ),
            wait=1.5,
        )
    waited = loop.time() - started
    assert not_ready(refused.value)
    # It retried for at least the wait and then gave up: no hang. (The server may also hold one
    # attempt for a while before refusing it, ~20 s seen on the dev server: the wait bounds the
    # retries, not one call.)
    assert 1.5 <= waited < 60, waited


async def test_the_cli_says_the_change_cannot_answer_and_exits_4(
    wedged: WorkflowHandle[WedgedChange, str], cli: Cli
) -> None:
    result = await cli("abort", wedged.id, "--operator", "oscar", "--reason", "stop it")

    said = " ".join(result.stderr.split())
    assert result.code == 4, result
    assert "the change cannot answer now:" in said
    assert "Workflow Task in failed state" in said and "WorkflowTaskFailed" in said
    assert (await wedged.describe()).status is WorkflowExecutionStatus.RUNNING  # nothing applied


async def test_status_says_the_server_refused_the_query(
    wedged: WorkflowHandle[WedgedChange, str], cli: Cli
) -> None:
    result = await cli("status", wedged.id, "--json")

    status = result.json()
    assert status["change_id"] == wedged.id
    assert status["message"].startswith("the server refused the status query (")
    assert "Workflow Task in failed state" in status["message"]
    assert "no worker answered" not in status["message"]
    assert "the server refused the status query" in " ".join(result.stderr.split())
