"""Focused regressions for defects the chaos campaign found (docs/chaos.md, "Findings").

Each test names the fault that exposed the defect. Each defect is fixed where it lives
(``activities/``), and its test guards against its return.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from temporalio import activity
from temporalio.api.failure.v1 import Failure
from temporalio.client import WorkflowExecutionStatus
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.audit import AuditActivities, AuditStoreError, SqliteAuditStore
from activities.kinds.http_deploy import HttpDeploy, HttpDeployParams
from activities.locks import LockActivities
from activities.resilience import CircuitBreakers, jittered_delay
from demo.fleet import FleetServer
from guardrails.base import CheckContext, EmptyParams, Guardrail, default_registry
from tests.helpers import OPEN_BUNDLE
from worker.converter import data_converter
from worker.main import build_worker
from worker.settings import Settings
from workflows.calls import MUTATION_RETRY
from workflows.ids import lock_id
from workflows.models import (
    AuditAction,
    AuditQuery,
    AuditRecord,
    Category,
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    CheckResult,
    Outcome,
    ReleaseLocksInput,
    Target,
)
from workflows.rollout_models import BreakerState

UNREACHABLE = "cannot write to the audit database postgresql://127.0.0.1:1/audit: connection lost"


class _UnreachableStore(SqliteAuditStore):
    """A store whose every append fails as an unreachable PostgreSQL does (retryable)."""

    def append(self, record: AuditRecord) -> bool:
        raise AuditStoreError(UNREACHABLE, retryable=True)

    def append_many(self, records: Sequence[AuditRecord]) -> list[bool]:
        raise AuditStoreError(UNREACHABLE, retryable=True)


def _record() -> AuditRecord:
    return AuditRecord(
        record_id="c1:run:1",
        action=AuditAction.GATE,
        actor="changeguard",
        at=datetime(2026, 12, 1, tzinfo=UTC),
        change_id="c1",
    )


async def test_a_retryable_audit_failure_reaches_temporal_with_its_own_message(
    tmp_path: Path,
) -> None:
    """Audit store down (audit_restart, audit_partition): the attempt fails with the store's words.

    Found by the campaign: every retryable audit failure raised an error that is its own cause,
    so the SDK's failure converter recursed until RecursionError, logged ~180 KB per attempt, and
    reported "Failed building exception result: maximum recursion depth exceeded" instead.
    """
    (tmp_path / "operators.yaml").write_text("operators: {}\n")
    store = _UnreachableStore(tmp_path / "audit.db")
    acts = AuditActivities(store, f"yaml:{tmp_path / 'operators.yaml'}")
    try:
        with pytest.raises(ApplicationError) as raised:
            await ActivityEnvironment().run(acts.record_audit, _record())
    finally:
        store.close()
    assert (raised.value.type, raised.value.non_retryable) == ("AuditUnavailable", False)
    assert isinstance(raised.value.__cause__, AuditStoreError), "the store's error is the cause"
    assert raised.value.__cause__.__cause__ is not raised.value.__cause__
    failure = Failure()
    await data_converter.encode_failure(raised.value, failure)  # what the worker sends
    assert failure.message == UNREACHABLE


class _LedgerDownForMutations(SqliteAuditStore):
    """A store that refuses the first ``n`` mutation records (retryable), as a restarting PostgreSQL."""

    refusals = 3  # every attempt of one apply, with the test's three-attempt retry policy

    def append(self, record: AuditRecord) -> bool:
        if record.action is AuditAction.MUTATION and self.refusals > 0:
            self.refusals -= 1
            raise AuditStoreError(UNREACHABLE, retryable=True)
        return super().append(record)

    def append_many(self, records: Sequence[AuditRecord]) -> list[bool]:
        """Effect records come in one transaction: refused as a whole, as one append was."""
        if any(r.action is AuditAction.MUTATION for r in records) and self.refusals > 0:
            self.refusals -= 1
            raise AuditStoreError(UNREACHABLE, retryable=True)
        return super().append_many(records)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("patience", "outcome"),
    [(None, Outcome.COMPLETED), (0.0, Outcome.ROLLED_BACK)],
    ids=["store-back-within-the-attempt", "every-attempt-fails"],
)
async def test_an_effect_whose_ledger_write_failed_on_the_last_attempt_is_still_recorded(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    patience: float | None,
    outcome: Outcome,
) -> None:
    """Audit store down during a mutation's attempts: the effect still reaches the ledger.

    Found by the long campaign (seed 4242, audit_restart): attempt 5 of apply_change deployed
    web-94, then failed writing its ``mutation`` record; the change compensated (the revert's
    record was written) but the ledger never learned of the deploy it reverted (I6). Now the
    attempt rides out a short outage, and a compensation records the mutation it undoes if no
    attempt of the mutation could.
    """
    if patience is not None:
        monkeypatch.setattr("activities.effects.LEDGER_PATIENCE_S", patience)
    monkeypatch.setattr(  # three quick attempts, all refused by the store below when patience is 0
        "workflows.calls.MUTATION_RETRY",
        RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=3),
    )
    (tmp_path / "operators.yaml").write_text("operators: {}\n")
    store = _LedgerDownForMutations(tmp_path / "audit.db")
    audit = AuditActivities(store, f"yaml:{tmp_path / 'operators.yaml'}")
    cid = f"ledger-{uuid.uuid4().hex[:8]}"
    with FleetServer(tmp_path / "fleet.db", port=0, hosts=1) as fleet:
        request = ChangeRequest.model_validate(
            {
                "change_id": cid,
                "kind": "http-deploy",
                "summary": "a deploy whose ledger write fails",
                "requester": "alice",
                "team": "web",
                "environment": "prod",
                "targets": [{"id": "web-01"}],
                "params": {"base_url": fleet.url, "version": "2.0.0"},
                "rollout": {"waves": ["100%"], "max_parallel": 1, "bake": "0s"},
                # It holds a lock to give back (a change no lock check gated signals none).
                "policy": {"guardrails": [{"use": "target-lock"}]},
            }
        )
        settings = Settings.from_env(task_queue=task_queue)
        async with build_worker(dev_env.client, settings, audit=audit):
            result = await dev_env.client.execute_workflow(
                "GuardedChange",
                request,
                id=cid,
                task_queue=task_queue,
                result_type=ChangeResult,
                execution_timeout=timedelta(minutes=2),
            )
        async with httpx.AsyncClient(base_url=fleet.url, trust_env=False) as http:
            deploys = (await http.get("/deploys")).json()
    try:
        records = store.list(AuditQuery(change_id=cid))
    finally:
        store.close()
    reverted = ["web-01"] if outcome is Outcome.ROLLED_BACK else []
    assert (result.outcome, result.reverted) == (outcome, reverted)
    took_effect = sorted(d["idempotency_key"] for d in deploys)
    keys = [f"{cid}:apply:web-01"] + ([f"{cid}:revert:web-01"] if reverted else [])
    assert took_effect == keys
    recorded = sorted(
        str(r.detail["idempotency_key"])
        for r in records
        if r.action in (AuditAction.MUTATION, AuditAction.COMPENSATION)
    )
    assert recorded == took_effect


async def test_a_mutation_behind_a_half_open_probe_goes_ahead_when_the_probe_succeeds(
    tmp_path: Path,
) -> None:
    """Fleet back after a fault (fleet_partition, fleet_5xx, fleet_restart): no attempt is spent.

    Found by the long campaign (seed 4242): when a fleet fault ended, the worker's breaker let one
    probe through, and every other mutation of that worker was refused with "half-open; another
    call is probing it now" and a retry delay of 0-5 s. Each refusal spent an attempt of the
    mutation's retry budget without calling the fleet (attempts 4 and 5 of several apply_change
    ended so, and good changes rolled back), and a recovered fleet waited up to 5 s more for the
    calls behind the probe. Now a call behind the probe waits for its verdict and goes ahead.
    """
    registry = CircuitBreakers(failure_threshold=1, cool_down=timedelta(0))
    kind = HttpDeploy(registry)
    with FleetServer(tmp_path / "fleet.db", port=0, hosts=3) as fleet:
        params = HttpDeployParams(base_url=fleet.url, version="2.0.0")

        def faults(**values: int) -> None:
            httpx.post(f"{fleet.url}/admin/faults", json=values, timeout=5).raise_for_status()

        faults(fail_next=1)
        with pytest.raises(ApplicationError):  # the fault: one failure opens the breaker
            await kind.apply(params, Target(id="web-01"), idempotency_key="k-01")
        faults(deploy_delay_ms=800)  # the fleet is back, and a deploy takes a while
        probe = asyncio.create_task(kind.apply(params, Target(id="web-02"), idempotency_key="k-02"))
        await asyncio.sleep(0.3)
        assert registry.get(fleet.url).state is BreakerState.HALF_OPEN, "the probe is in flight"

        behind = await kind.apply(params, Target(id="web-03"), idempotency_key="k-03")

        assert (await probe).applied and behind.applied
        assert registry.get(fleet.url).state is BreakerState.CLOSED


async def test_a_short_brownout_holds_the_breaker_open_for_seconds_not_half_a_minute(
    tmp_path: Path,
) -> None:
    """A 5 s fleet_5xx: the breaker it opened lets a probe through 5 s later, not 30 s later.

    Found by the short campaign (seed 971247): after a 6.3 s fleet_5xx, changes moved again
    19.6-32.6 s after the fleet was healthy, because every worker's breaker had opened for a fixed
    30 s. Now the first cool-down is 5 s and only failed probes lengthen it (up to 30 s).
    """
    now = [1000.0]
    registry = CircuitBreakers(clock=lambda: now[0])
    kind = HttpDeploy(registry)
    with FleetServer(tmp_path / "fleet.db", port=0, hosts=2) as fleet:
        params = HttpDeployParams(base_url=fleet.url, version="2.0.0")
        async with httpx.AsyncClient(base_url=fleet.url, trust_env=False) as http:
            (await http.post("/admin/faults", json={"fail_next": 5})).raise_for_status()
        for _ in range(5):  # the brownout: five 503s open the breaker
            with pytest.raises(ApplicationError):
                await kind.apply(params, Target(id="web-01"), idempotency_key="k-01")
        assert registry.get(fleet.url).state is BreakerState.OPEN

        now[0] += 5  # the fleet has been healthy for 5 s
        applied = await kind.apply(params, Target(id="web-02"), idempotency_key="k-02")

        assert applied.applied
        assert registry.get(fleet.url).state is BreakerState.CLOSED


@pytest.mark.integration
async def test_a_worker_dying_while_it_releases_locks_costs_seconds_not_two_minutes(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """worker_kill while a change gives its target locks back: it ends within seconds.

    Found by the short campaign (seed 971247, worker_kill of both workers): an ``approve`` change
    scheduled ``release_target_locks`` as both workers were SIGKILLed; the attempt sat on the dead
    worker until its 2-minute start-to-close timeout, and the change moved again 88 s after the
    fault had ended. Now the activity heartbeats per lock and has a 10 s heartbeat timeout. The
    dead worker is played by a first attempt that never heartbeats nor returns.
    """
    real = LockActivities.release_target_locks
    attempts: list[int] = []

    @activity.defn(name="release_target_locks")
    async def dies_the_first_time(self: LockActivities, inp: ReleaseLocksInput) -> int:
        attempts.append(activity.info().attempt)
        if len(attempts) == 1:
            await asyncio.Event().wait()  # a dead worker: no heartbeat, no result
        # Set on the class, this function's first parameter hint is taken for the payload's: the
        # input arrives as a plain mapping.
        return await real(self, ReleaseLocksInput.model_validate(inp))

    monkeypatch.setattr(LockActivities, "release_target_locks", dies_the_first_time)
    cid = f"locks-{uuid.uuid4().hex[:8]}"
    with FleetServer(tmp_path / "fleet.db", port=0, hosts=1) as fleet:
        request = ChangeRequest.model_validate(
            {
                "change_id": cid,
                "kind": "http-deploy",
                "summary": "a deploy whose lock release meets a dying worker",
                "requester": "alice",
                "team": "web",
                "environment": "prod",
                "targets": [{"id": "web-01"}],
                "params": {"base_url": fleet.url, "version": "2.0.0"},
                "rollout": {"waves": ["100%"], "max_parallel": 1, "bake": "0s"},
                # It holds a lock to give back (a change no lock check gated signals none).
                "policy": {"guardrails": [{"use": "target-lock"}]},
            }
        )
        settings = Settings.from_env(task_queue=task_queue)
        loop = asyncio.get_running_loop()
        async with build_worker(dev_env.client, settings):
            began = loop.time()
            result = await dev_env.client.execute_workflow(
                "GuardedChange",
                request,
                id=cid,
                task_queue=task_queue,
                result_type=ChangeResult,
                execution_timeout=timedelta(seconds=90),
            )
            took = loop.time() - began
    assert result.outcome is Outcome.COMPLETED
    assert attempts[:2] == [1, 2], "the release was retried after the first attempt died"
    assert took < 45, f"the change took {took:.0f}s: the dead attempt was noticed late"
    lock = dev_env.client.get_workflow_handle(lock_id("web-01"))
    for _ in range(100):  # the second attempt gave the lock back (it would bar later tests)
        if (await lock.describe()).status is not WorkflowExecutionStatus.RUNNING:
            break
        await asyncio.sleep(0.1)
    assert str(await lock.result()) == f"released by {cid}"


def test_a_mutations_retry_budget_outlasts_a_35_second_target_outage() -> None:
    """Fleet away for 20-35 s (fleet_partition, fleet_5xx): a good change keeps its mutation.

    Found by the long campaign (seed 4242): five attempts with the kinds' full-jitter delays
    covered about 15 s of unavailability on average, and 20-35 s fleet faults rolled back changes
    whose version was good. Now the budget (``MUTATION_RETRY``, ten attempts) outlasts a 35 s
    outage for at least 95 % of mutations, counting the retry delays alone (each attempt's own
    time, and a breaker's cool-down instead of a jittered delay, only add to it).
    """
    rng = random.Random(13)
    attempts = MUTATION_RETRY.maximum_attempts
    covered = sorted(
        sum(jittered_delay(n, rng=rng).total_seconds() for n in range(1, attempts))
        for _ in range(2000)
    )
    assert covered[len(covered) // 20] >= 35, f"5th percentile {covered[len(covered) // 20]:.0f}s"


class _QueueThatCameDue(Guardrail[EmptyParams]):
    """``wait`` until a second before the check ran, once per change: a gate slower than its wait.

    As ``target-lock`` answers a queued change under load: its ``retry_after`` is the check's
    ``now`` plus 30 s, and the gate took longer than that to report.
    """

    name = "queue-that-came-due"
    category = Category.CONCURRENCY
    default_owner = "platform"
    seen: ClassVar[set[str]] = set()

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        if ctx.change.change_id not in self.seen:
            self.seen.add(ctx.change.change_id)
            return ctx.wait("queued behind a holder", remedy="wait", retry_after=ctx.now - _1S)
        return ctx.passed("the lock is ours")


_1S = timedelta(seconds=1)


@pytest.mark.integration
async def test_a_wait_that_came_due_while_the_gate_ran_gates_again_instead_of_rejecting(
    dev_env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    """Everything slow (the long campaign on loaded cores): a queued change is not rejected.

    Found by the long campaign (seed 4242, load average 9-11 on 2 cores): 22 ``queued`` changes
    and one ``good`` ended ``rejected`` with "the deadline <24 h from now> passed". Their gate
    said ``wait`` (``target-lock``: queued, ``retry_after`` = the check's time + 30 s) and took
    more than 30 s to report; the change read a ``retry_after`` already past as its deadline
    having passed. Now it gates again a second later, and proceeds once the lock is its own.
    """
    registry = default_registry()
    registry.register(_QueueThatCameDue)
    cid = f"due-{uuid.uuid4().hex[:8]}"
    with FleetServer(tmp_path / "fleet.db", port=0, hosts=1) as fleet:
        request = ChangeRequest.model_validate(
            {
                "change_id": cid,
                "kind": "http-deploy",
                "summary": "a change whose gate reports a wait that already came due",
                "requester": "alice",
                "team": "web",
                "environment": "prod",
                "targets": [{"id": "web-01"}],
                "params": {"base_url": fleet.url, "version": "2.0.0"},
                "rollout": {"waves": ["100%"], "max_parallel": 1, "bake": "0s"},
                "policy": {"guardrails": [{"use": "queue-that-came-due"}]},
            }
        )
        settings = Settings.from_env(task_queue=task_queue)
        async with build_worker(dev_env.client, settings, bundle=OPEN_BUNDLE, guardrails=registry):
            handle = await dev_env.client.start_workflow(
                "GuardedChange",
                request,
                id=cid,
                task_queue=task_queue,
                result_type=ChangeResult,
                execution_timeout=timedelta(minutes=2),
            )
            result = await handle.result()
            status = await handle.query("status", result_type=ChangeStatus)
    assert (result.outcome, result.applied) == (Outcome.COMPLETED, ["web-01"]), result.message
    assert status.gate_runs == 2
