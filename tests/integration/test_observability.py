"""Spans over OTLP and changeguard's Prometheus metrics, from real changes on the dev server.

Both workers replay every task (``max_cached_workflows=0``): a span or a count that replay
re-emitted would show up here as a duplicate.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities
from demo.fleet import FleetServer
from tests import fakes
from tests.fakes import Ledger, RecordingKind, Switch
from tests.integration.conftest import Cli
from tests.otlp import OtlpReceiver, ReceivedSpan
from tests.servers import free_port
from worker import telemetry, waiting
from worker.converter import data_converter
from worker.main import build_worker
from worker.settings import Settings
from workflows.models import (
    Approval,
    ApprovalResult,
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    OperatorAction,
    Outcome,
    Phase,
    idempotency_key,
)

HOSTS = ["web-01", "web-02", "web-03"]


@pytest.fixture
def receiver(
    dev_env: WorkflowEnvironment, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OtlpReceiver]:
    """An OTLP receiver, and the standard variables pointing this process's exporter at it.

    ``dev_env`` comes first: the dev server must not inherit the variables.
    """
    with OtlpReceiver() as r:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        try:
            yield r
        finally:
            telemetry.reset_exporters()


async def _spans(receiver: OtlpReceiver, change_id: str, *, within: float = 20) -> None:
    """Wait until the change's own span (the last to end) has arrived."""
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not any(s.attributes.get("change.id") == change_id for s in receiver.named("change")):
        telemetry.flush()
        if loop.time() > end:
            raise AssertionError(f"no change span within {within:g}s: {len(receiver.spans)} spans")
        await asyncio.sleep(0.2)


def _under(receiver: OtlpReceiver, span: ReceivedSpan, name: str) -> bool:
    return any(a.name == name for a in receiver.ancestors(span))


async def test_a_change_exports_its_tree_of_spans_over_otlp(
    dev_env: WorkflowEnvironment, task_queue: str, fleet: FleetServer, receiver: OtlpReceiver
) -> None:
    """A change exports its spans: change → gate → check and change → wave → mutation, with attributes."""
    plugins = telemetry.client_plugins()
    assert [type(p).__name__ for p in plugins] == ["OpenTelemetryPlugin"]
    client = await Client.connect(
        dev_env.client.service_client.config.target_host,
        namespace=dev_env.client.namespace,
        data_converter=data_converter,
        plugins=plugins,
    )
    async with httpx.AsyncClient(base_url=fleet.url) as http:
        (await http.post("/versions/6.6.6", json={"bad": True})).raise_for_status()
    change_id = f"otel-{uuid.uuid4().hex[:8]}"
    request = ChangeRequest.model_validate(
        {
            "change_id": change_id,
            "kind": "http-deploy",
            "summary": "deploy a bad version",
            "requester": "alice",
            "team": "web",
            "environment": "prod",
            "targets": [{"id": h} for h in HOSTS],
            "params": {"base_url": fleet.url, "version": "6.6.6"},
            "rollout": {"waves": ["1", "100%"], "max_parallel": 2, "bake": "2s"},
            "policy": {
                "guardrails": [
                    {
                        "use": "http-health",
                        "owner": "web-team",
                        "params": {"url": f"{fleet.url}/healthz"},
                    },
                    {
                        "use": "change-window",
                        "params": {"timezone": "UTC", "allow": ["Mon-Sun 00:00-24:00"]},
                    },
                ],
                "signals": [
                    {
                        "name": "error-rate",
                        "source": "fleet",
                        "degraded_above": 0.01,
                        "critical_above": 0.1,
                    }
                ],
                "responses": [{"signal": "error-rate", "state": "critical", "do": "rollback"}],
            },
        }
    )
    settings = Settings.from_env(task_queue=task_queue)
    async with build_worker(client, settings, max_cached_workflows=0):
        handle = await client.start_workflow(
            "GuardedChange", request, id=change_id, task_queue=task_queue, result_type=ChangeResult
        )
        result = await handle.result()
    assert result.outcome is Outcome.ROLLED_BACK
    await _spans(receiver, change_id)

    ours = [s for s in receiver.spans if s.attributes.get("change.id") == change_id]
    [change] = [s for s in ours if s.name == "change"]
    assert change.resource["service.name"] == "changeguard"
    assert change.attributes["change.outcome"] == "rolled_back"
    assert change.attributes["change.kind"] == "http-deploy"
    # One span per thing done, although every task replayed the history before it.
    gates = [s for s in ours if s.name == "gate"]
    assert sorted(g.attributes["gate.id"] for g in gates) == [f"{change_id}/gate-1"]
    assert all(_under(receiver, g, "change") for g in gates)
    checks = {s.attributes["rule.id"]: s for s in ours if s.name == "check"}
    assert sorted(checks) == ["change-window", "http-health"]
    health = checks["http-health"]
    assert {k: health.attributes[k] for k in ("guardrail", "check.status", "check.owner")} == {
        "guardrail": "http-health",
        "check.status": "pass",
        "check.owner": "web-team",
    }
    assert _under(receiver, health, "gate") and _under(receiver, health, "change")
    assert {s.trace_id for s in ours} == {change.trace_id}

    # Wave 1, one host, then rolled back; http-deploy applies in chunks (apply_change_many).
    [chunk] = [s for s in ours if s.name == "mutations"]
    assert chunk.attributes["target.ids"] == "web-01"  # lists are comma-separated
    assert chunk.attributes["idempotency.keys"] == idempotency_key(change_id, "apply", "web-01")
    assert chunk.attributes["mutation.results"] == "applied"
    assert chunk.attributes["mutation.result"] == "applied"
    assert _under(receiver, chunk, "wave") and _under(receiver, chunk, "change")
    [run] = [s for s in receiver.spans if s.name == "RunActivity:apply_change_many"]
    assert _under(receiver, run, "mutations")
    [compensation] = [s for s in ours if s.name == "compensation"]
    assert compensation.attributes["idempotency.key"] == idempotency_key(
        change_id, "revert", "web-01"
    )
    assert compensation.attributes["mutation.result"] == "applied"
    assert _under(receiver, compensation, "change")
    polls = [s for s in ours if s.name == "bake.poll"]
    assert polls and all(s.attributes["wave.number"] == 1 for s in polls)
    assert "error-rate=critical" in polls[-1].attributes["bake.states"]
    # Temporal's own spans are in the same trace.
    names = {s.name for s in receiver.spans if s.trace_id == change.trace_id}
    assert {
        "RunWorkflow:GuardedChange",
        "RunWorkflow:GuardrailGate",
        "RunActivity:apply_change_many",
    } <= names


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER='jaeger': unknown exporter(s)"),
        ({"CHANGEGUARD_WAITING_SAMPLE_S": "soon"}, "CHANGEGUARD_WAITING_SAMPLE_S='soon'"),
    ],
)
async def test_the_cli_refuses_bad_telemetry_settings_by_name(
    cli: Cli, env: dict[str, str], says: str
) -> None:
    """A bad OTEL_* or sampler setting is an invalid setting (exit 2), named, not a traceback."""
    result = await cli("status", "no-such-change", env=env)
    assert result.code == 2, result.stderr
    assert says in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------- metrics

OPERATORS = "operators:\n  alice: [sre-leads]\n  bob: [sre-leads]\n"


@pytest.fixture
def operators() -> str:
    return OPERATORS


@pytest.fixture
async def metrics_client(dev_env: WorkflowEnvironment) -> AsyncIterator[tuple[Client, str]]:
    """A client whose runtime serves Prometheus metrics on a free port; yields it and the URL."""
    bind = f"127.0.0.1:{free_port()}"
    runtime = Runtime(telemetry=TelemetryConfig(metrics=telemetry.prometheus_config(bind)))
    client = await Client.connect(
        dev_env.client.service_client.config.target_host,
        namespace=dev_env.client.namespace,
        data_converter=data_converter,
        runtime=runtime,
    )
    yield client, f"http://{bind}/metrics"


def _request(rules: list[dict[str, Any]], *, waves: list[str], bake: str = "0s") -> ChangeRequest:
    return ChangeRequest(
        change_id=f"metrics-{uuid.uuid4().hex[:8]}",
        kind="recording",
        summary="metrics",
        requester="alice",
        team="web",
        environment="prod",
        targets=[{"id": "t1"}, {"id": "t2"}],  # type: ignore[list-item]
        rollout={"waves": waves, "bake": bake},  # type: ignore[arg-type]
        policy={"guardrails": rules},
    )


RULE_X = {"id": "rule-x", "use": "switch", "opt_out": {"approvers": ["sre-leads"]}}
SHADOW_Y = {"id": "shadow-y", "use": "fake-health", "mode": "shadow", "params": {"outcome": "fail"}}


async def _until_phase(client: Client, change_id: str, phase: Phase) -> None:
    """Wait for the ``ChangePhase`` search attribute, not the ``status`` query.

    A query on a workflow the worker does not cache replays its history, and a query that lands
    while new events await their task can run them live once more (a count recorded twice):
    this test counts exactly, so it watches visibility instead (docs/observability.md).
    """
    query = f"WorkflowId = '{change_id}' AND ChangePhase = '{phase.value}'"
    for _ in range(400):
        if [w async for w in client.list_workflows(query, limit=1)]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{change_id} did not reach {phase.value}")


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


async def test_metrics_count_blocks_approvals_rollbacks_and_shadow_failures(
    metrics_client: tuple[Client, str], task_queue: str, audit: AuditActivities
) -> None:
    """Blocked by rule-x twice, one approval (and one refused), one abort, one rollback, one shadow."""
    client, url = metrics_client
    RecordingKind.ledger = Ledger()
    Switch.outcome = "fail"
    async with build_worker(
        client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=audit,
        max_cached_workflows=0,
    ):

        async def start(req: ChangeRequest) -> Any:
            return await client.start_workflow(
                "GuardedChange",
                req,
                id=req.change_id,
                task_queue=task_queue,
                result_type=ChangeResult,
            )

        # 1. Blocked by rule-x, approved by bob (the requester's own approval is refused first).
        approved = await start(_request([RULE_X], waves=["100%"]))
        await _until_phase(client, approved.id, Phase.AWAITING_APPROVAL)
        status = await approved.query("status", result_type=ChangeStatus)
        assert status.report is not None
        approval = {
            "guardrails": ["rule-x"],
            "reason": "incident 42",
            "report_hash": status.report.report_hash,
        }
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await approved.execute_update("approve", Approval(approver="alice", **approval))
        assert refused.value.cause.message.startswith("four eyes: alice requested this change")
        await approved.execute_update(
            "approve", Approval(approver="bob", **approval), result_type=ApprovalResult
        )
        assert (await approved.result()).outcome is Outcome.COMPLETED
        # 2. Blocked by rule-x again, aborted.
        aborted = await start(_request([RULE_X], waves=["100%"]))
        await _until_phase(client, aborted.id, Phase.AWAITING_APPROVAL)
        # The waiting sampler finds it (visibility catches up within a moment).
        for _ in range(100):
            found = await waiting.sample(client)
            if found[Phase.AWAITING_APPROVAL].count:
                break
            await asyncio.sleep(0.1)
        assert found[Phase.AWAITING_APPROVAL].count == 1
        assert found[Phase.BLOCKED] == waiting.Waiting(0, 0.0)
        assert 0 <= found[Phase.AWAITING_APPROVAL].longest_s < 60
        runtime = client.service_client.config.runtime
        assert runtime is not None
        waiting.publish(runtime.metric_meter, found)
        await aborted.execute_update("abort", OperatorAction(operator="oscar", reason="not today"))
        assert (await aborted.result()).outcome is Outcome.ABORTED
        # 3. rule-x passes, shadow-y would have blocked; rolled back by an operator mid-bake.
        Switch.outcome = "pass"
        rolled = await start(_request([RULE_X, SHADOW_Y], waves=["1", "100%"], bake="1h"))
        await _until_phase(client, rolled.id, Phase.BAKING)
        await rolled.execute_update("rollback", OperatorAction(operator="oscar", reason="errors"))
        assert (await rolled.result()).outcome is Outcome.ROLLED_BACK
        status = await rolled.query("status", result_type=ChangeStatus)
        assert status.reverted == ["t1"]

        async with httpx.AsyncClient() as http:
            text = (await http.get(url)).text

    def n(name: str, **labels: str) -> float:
        return _sample(text, "changeguard_" + name, **labels)

    assert n("gate_blocks", rule="rule-x") == 2
    assert n("gate_decisions", decision="block") == 2
    assert n("gate_decisions", decision="proceed") == 1
    assert n("check_results", rule="rule-x", status="fail", mode="enforce") == 2
    assert n("check_results", rule="rule-x", status="pass", mode="enforce") == 1
    assert n("shadow_would_block", rule="shadow-y") == 1
    assert n("check_results", rule="shadow-y", status="fail", mode="shadow") == 1
    assert n("approvals", result="accepted", rule="rule-x") == 1
    assert n("approvals", result="refused", reason="four_eyes") == 1
    assert n("operator_actions", action="abort") == 1
    assert n("operator_actions", action="rollback") == 1
    assert n("outcomes", outcome="completed") == 1
    assert n("outcomes", outcome="aborted") == 1
    assert n("outcomes", outcome="rolled_back") == 1
    assert n("compensation_failures") == 0
    assert n("mutation_attempts", step="apply") == 3  # t1, t2 of change 1; t1 of change 3
    assert n("mutation_attempts", step="revert") == 1
    assert n("mutation_results", step="apply", result="applied") == 3
    assert n("phase_seconds_count", phase="AwaitingApproval") == 2
    assert n("phase_seconds_count", phase="Baking") == 1
    assert n("changes_waiting", phase="AwaitingApproval") == 1
    assert n("changes_waiting", phase="Blocked") == 0
    assert 0 <= n("changes_waiting_longest_seconds", phase="AwaitingApproval") < 60
