"""apply_change_many: several targets per activity, each with its own key, result and record."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, ClassVar

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities import effects
from activities.audit import SqliteAuditStore
from activities.change import ChangeActivities
from activities.kinds.base import ChangeKind, new_registry
from guardrails.plugins import PluginRegistry
from tests import fakes
from tests.builders import change_request, new_change_id, target_list
from tests.fakes import Ledger, RecordingKind, RecordingParams
from worker.main import build_worker
from workflows import errors
from workflows.apply_many import chunks, rounds
from workflows.apply_many_models import ApplyManyCheckpoint, ApplyManyInput, ApplyManyResult
from workflows.models import (
    ApplyInput,
    ApplyResult,
    AuditQuery,
    ChangeRequest,
    ChangeResult,
    Outcome,
    Target,
    idempotency_key,
)


class ManyKind(RecordingKind):
    """The recording kind, registered under its name, opted in to apply_many.

    ``unavailable_once``: targets whose first apply fails *retryably* (the attempt is retried).
    """

    apply_many_size = 10
    unavailable_once: ClassVar[set[str]] = set()
    calls: ClassVar[list[str]] = []

    async def apply(
        self, params: RecordingParams, target: Target, *, idempotency_key: str
    ) -> ApplyResult:
        ManyKind.calls.append(target.id)
        if target.id in ManyKind.unavailable_once:
            ManyKind.unavailable_once.discard(target.id)
            raise ApplicationError(f"{target.id} unavailable", type=errors.TARGET_UNAVAILABLE)
        return await super().apply(params, target, idempotency_key=idempotency_key)


def _kinds() -> PluginRegistry[ChangeKind[Any]]:
    registry = new_registry()
    registry.register(ManyKind)
    return registry


@pytest.fixture(autouse=True)
def ledger() -> Ledger:
    RecordingKind.ledger = Ledger()
    ManyKind.unavailable_once, ManyKind.calls = set(), []
    return RecordingKind.ledger


def _items(change_id: str, ids: list[str], params: dict[str, Any] | None = None) -> ApplyManyInput:
    return ApplyManyInput(
        items=[
            ApplyInput(
                change_id=change_id,
                kind="recording",
                step="apply",
                target=Target(id=t),
                params=params or {},
                idempotency_key=idempotency_key(change_id, "apply", t),
            )
            for t in ids
        ]
    )


def _env(attempt: int = 1, details: list[Any] | None = None) -> tuple[ActivityEnvironment, list]:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt, heartbeat_details=details or [])
    beats: list[Any] = []
    env.on_heartbeat = lambda *d: beats.append(d)
    return env, beats


async def test_a_retried_attempt_skips_the_targets_its_checkpoint_shows_done(
    ledger: Ledger,
) -> None:
    store = SqliteAuditStore(":memory:")
    acts = ChangeActivities(_kinds(), ledger=store)
    ids = ["t1", "t2", "t3", "t4", "t5"]
    inp = _items("c1", ids)
    ManyKind.unavailable_once = {"t4"}
    env, beats = _env()
    with pytest.raises(ApplicationError, match="t4 unavailable"):
        await env.run(acts.apply_change_many, inp)
    assert ManyKind.calls == ["t1", "t2", "t3", "t4"]
    last = beats[-1][0]
    assert sorted(last["checkpoint"]["done"]) == [
        idempotency_key("c1", "apply", t) for t in ids[:3]
    ]
    # Each result is dumped once as it is done; the checkpoint is what the model itself dumps.
    resumed = ApplyManyCheckpoint.model_validate(last["checkpoint"])
    assert last["checkpoint"] == resumed.model_dump(mode="json")
    assert [r.target_id for r in resumed.done.values()] == ids[:3]

    env2, _ = _env(attempt=2, details=[last])
    out: ApplyManyResult = await env2.run(acts.apply_change_many, inp)
    assert ManyKind.calls == ["t1", "t2", "t3", "t4", "t4", "t5"]  # t1-t3 not touched again
    assert [r.target_id for r in out.results] == ids and out.failed is None
    assert ledger.applied == ids
    records = store.list(AuditQuery(change_id="c1"))
    effects = sorted(r.record_id for r in records if r.record_id.startswith("effect:"))
    assert effects == sorted(f"effect:{idempotency_key('c1', 'apply', t)}" for t in ids)


def _effects(store: SqliteAuditStore, change_id: str) -> list[str]:
    records = store.list(AuditQuery(change_id=change_id))
    return sorted(r.record_id for r in records if r.record_id.startswith("effect:"))


def _effect_ids(change_id: str, ids: list[str]) -> list[str]:
    return sorted(f"effect:{idempotency_key(change_id, 'apply', t)}" for t in ids)


async def test_a_chunk_writes_its_records_in_one_hop_to_the_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Five targets, five effect records, one thread hop (was one per target)."""
    hops: list[Any] = []
    to_thread = asyncio.to_thread

    async def counting(fn: Any, *args: Any) -> Any:
        hops.append(fn)
        return await to_thread(fn, *args)

    monkeypatch.setattr(effects.asyncio, "to_thread", counting)
    store = SqliteAuditStore(":memory:")
    acts = ChangeActivities(_kinds(), ledger=store)
    ids = ["t1", "t2", "t3", "t4", "t5"]
    env, _ = _env()
    out = await env.run(acts.apply_change_many, _items("c5", ids))
    assert [r.target_id for r in out.results] == ids
    assert _effects(store, "c5") == _effect_ids("c5", ids)
    assert len(hops) == 1


async def test_a_retried_attempt_records_what_its_checkpoint_names_done(
    ledger: Ledger,
) -> None:
    """An attempt that died between checkpoint and write: the next one writes those records."""
    ids = ["t1", "t2", "t3", "t4"]
    inp = _items("c6", ids)
    ManyKind.unavailable_once = {"t3"}
    env, beats = _env()
    with pytest.raises(ApplicationError, match="t3 unavailable"):
        # no ledger: as if the attempt had died before its records were written
        await env.run(ChangeActivities(_kinds(), ledger=None).apply_change_many, inp)
    store = SqliteAuditStore(":memory:")
    env2, _ = _env(attempt=2, details=[beats[-1][0]])
    out = await env2.run(ChangeActivities(_kinds(), ledger=store).apply_change_many, inp)
    assert ManyKind.calls == ["t1", "t2", "t3", "t3", "t4"]  # t1, t2 not applied again
    assert [r.target_id for r in out.results] == ids
    assert _effects(store, "c6") == _effect_ids("c6", ids)


async def test_a_cancelled_chunk_records_the_targets_it_applied(ledger: Ledger) -> None:
    """Cancelled while a target is in flight: the targets done before it are in the ledger."""
    store = SqliteAuditStore(":memory:")
    acts = ChangeActivities(_kinds(), ledger=store)
    env, _ = _env()
    inp = _items("c7", ["a", "b", "c", "d"], {"hold": "c7", "hold_only": ["c"]})
    running = asyncio.create_task(env.run(acts.apply_change_many, inp))
    while "c" not in ManyKind.calls:  # noqa: ASYNC110  (polls the kind's calls)
        await asyncio.sleep(0.01)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert ledger.applied == ["a", "b"]
    assert _effects(store, "c7") == _effect_ids("c7", ["a", "b"])


async def test_a_target_that_fails_for_good_ends_the_chunk_with_the_results_before_it(
    ledger: Ledger,
) -> None:
    store = SqliteAuditStore(":memory:")
    acts = ChangeActivities(_kinds(), ledger=store)
    env, _ = _env()
    out = await env.run(
        acts.apply_change_many, _items("c2", ["a", "b", "c"], {"fail_apply": ["b"]})
    )
    assert [r.target_id for r in out.results] == ["a"]
    assert _effects(store, "c2") == _effect_ids("c2", ["a"])  # recorded, though the chunk failed
    assert out.failed is not None
    assert (out.failed.target_id, out.failed.type) == ("b", errors.TARGET_REJECTED)
    assert ManyKind.calls == ["a", "b"]  # c never attempted


async def test_a_kind_that_does_not_opt_in_is_refused_by_name() -> None:
    registry = new_registry()
    registry.register(RecordingKind)
    with pytest.raises(ApplicationError, match="apply_many_size is 0"):
        await ActivityEnvironment().run(
            ChangeActivities(registry).apply_change_many, _items("c3", ["a"])
        )


def test_chunks_come_in_whole_rounds_of_the_budget() -> None:
    targets = [Target(id=f"t{i}") for i in range(100)]
    assert [len(c) for c in rounds(targets, 25, 3)] == [17] * 5 + [15]
    assert [len(c) for c in rounds(targets, 25, 1)] == [25] * 4
    assert [len(c) for c in rounds(targets, 10, 2)] == [10] * 10
    assert [len(c) for c in rounds(targets[:50], 10, 2)] == [9] * 5 + [5]
    assert [t for c in rounds(targets, 7, 3) for t in c] == targets


def test_chunks_keep_the_budget_busy_and_the_order() -> None:
    targets = [Target(id=f"t{i}") for i in range(100)]
    assert [len(c) for c in chunks(targets, 10, 1)] == [10] * 10
    assert [len(c) for c in chunks(targets, 10, 20)] == [5] * 20
    assert [t for c in chunks(targets, 7, 3) for t in c] == targets


def _request(params: dict[str, Any]) -> ChangeRequest:
    return change_request(
        change_id=new_change_id("many"),
        summary="many targets per activity",
        team="web",
        targets=target_list(250, "h{:03d}"),
        params=params,
        rollout={"waves": ["100%"], "max_parallel": 4},
        policy={"guardrails": [{"use": "always-pass"}]},
    )


async def _run(env: WorkflowEnvironment, task_queue: str, req: ChangeRequest) -> tuple[Any, int]:
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=_kinds()
    ):
        handle = await env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        result = await handle.result()
        chunked = 0
        for i in range(1, 4):
            batch = env.client.get_workflow_handle(
                f"{req.change_id}/apply-h{(i - 1) * 100 + 1:03d}"
            )
            for event in (await batch.fetch_history()).events:
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    name = event.activity_task_scheduled_event_attributes.activity_type.name
                    chunked += name == "apply_change_many"
    return result, chunked


async def test_batches_of_an_opted_in_kind_apply_in_chunks_with_per_target_results(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    result, chunked = await _run(env, task_queue, _request({}))
    assert result.outcome is Outcome.COMPLETED, result.message
    assert sorted(result.applied) == [f"h{i:03d}" for i in range(1, 251)]
    assert sorted(ledger.keys) == sorted(
        idempotency_key(result.change_id, "apply", t) for t in result.applied
    )
    assert 25 <= chunked < 250  # chunks of at most 10, not one activity per target


async def test_a_failed_chunk_rolls_back_every_applied_target_one_by_one(
    env: WorkflowEnvironment, task_queue: str, ledger: Ledger
) -> None:
    result, _ = await _run(env, task_queue, _request({"fail_apply": ["h150"]}))
    assert result.outcome is Outcome.ROLLED_BACK, result.message
    assert "h150 refused" in result.message
    assert ledger.applied and sorted(ledger.reverted) == sorted(ledger.applied)
    assert "h150" not in ledger.applied
