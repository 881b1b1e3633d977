"""docs/python-api.md's example, run as it stands against the dev server, a worker and the fleet."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

import changeguard
from demo.fleet import FleetServer
from workflows.models import ChangeRequest

DOC = Path(__file__).parents[2] / "docs" / "python-api.md"


def example() -> str:
    """The doc's first Python block."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert blocks, f"{DOC} has no python block"
    return str(blocks[0])


async def test_the_documented_example_deploys_the_fleet(
    worker: None,
    fleet: FleetServer,
    dev_env: WorkflowEnvironment,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", dev_env.client.service_client.config.target_host)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", dev_env.client.namespace)
    monkeypatch.setenv("CHANGEGUARD_TASK_QUEUE", task_queue)
    monkeypatch.setenv("FLEET_URL", fleet.url)
    scope: dict[str, Any] = {"__name__": "python_api_example"}
    exec(compile(example(), str(DOC), "exec"), scope)  # the block, not a copy of it

    outcome = await scope["main"]()

    assert outcome is changeguard.Outcome.COMPLETED
    out = capsys.readouterr().out
    change_id = re.search(r"started (chg-[0-9a-f]{12})", out)
    assert change_id, out
    # follow() yields the phases it sees (a fast change may pass Executing between two looks);
    # the last one it yields is the change's end, and the example prints the outcome.
    assert "Completed         applied to 2 target(s)" in out and "completed" in out, out
    async with httpx.AsyncClient(base_url=fleet.url) as http:
        for host in ("web-01", "web-02"):
            assert (await http.get(f"/hosts/{host}")).json()["version"] == "1.1.0"
    client = await changeguard.connect(task_queue=task_queue)
    status = await client.get(change_id.group(1)).status()
    assert status.phase is changeguard.Phase.COMPLETED
    listed = [c.id async for c in client.list(f"WorkflowId = '{change_id.group(1)}'")]
    assert listed == [change_id.group(1)]


async def test_a_used_change_id_and_a_refused_update_raise_typed_errors(
    worker: None, fleet: FleetServer, dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    client = changeguard.Client(
        dev_env.client, changeguard.Settings.from_env(task_queue=task_queue)
    )
    request = ChangeRequest(
        change_id=f"api-{uuid.uuid4().hex[:8]}",
        kind="http-deploy",
        summary="deploy 1.1.0",
        requester="alice",
        team="web",
        environment="prod",
        targets=[changeguard.Target(id="web-03")],
        params={"base_url": fleet.url, "version": "1.1.0"},
        rollout=changeguard.Rollout(waves=["100%"]),
        policy={"guardrails": [{"use": "http-health", "params": {"url": f"{fleet.url}/nope"}}]},
    )
    change = await client.start(request)
    with pytest.raises(changeguard.ChangeExists, match="exists or existed already"):
        await client.start(request)
    async for status in change.follow(interval=0.2):
        if status.phase is changeguard.Phase.BLOCKED:
            break
    assert status.phase is changeguard.Phase.BLOCKED, status
    with pytest.raises(changeguard.Refused) as refused:
        await change.resume(operator="oscar", reason="nothing is paused")
    assert "not Paused" in refused.value.reason
    await change.abort(operator="oscar", reason="test done")
    assert (await change.result()).outcome is changeguard.Outcome.ABORTED
