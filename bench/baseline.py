"""The bare-SDK baseline the rollout and concurrent-changes benches compare ``GuardedChange`` with.

``BenchBareRollout`` makes the same ``apply_change`` calls as a change, with the same options and
idempotency-key scheme, and nothing else (no gate, no waves, no saga; over ``CHUNK`` targets, child
workflows of ``CHUNK`` each, as any SDK user would split it);
:func:`guarded_and_bare_workers` builds the two workers a bench compares.

The workflow runs in the default sandbox, which re-executes this whole file to validate and run it:
module-level code must be sandbox-safe (see bench/gate.py).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from temporalio import workflow
from temporalio.workflow import ActivityCancellationType

if not workflow.unsafe.in_sandbox():
    ROOT = str(Path(__file__).resolve().parent.parent)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

with workflow.unsafe.imports_passed_through():
    from activities.change import ChangeActivities
    from workflows.calls import MUTATION_HEARTBEAT, MUTATION_RETRY, MUTATION_TIMEOUT
    from workflows.models import ApplyInput, ApplyResult, Target, idempotency_key
    from workflows.wave_window import lane_widths

if TYPE_CHECKING:
    from temporalio.client import Client


CHUNK = 1000
"""Targets per history: a larger baseline runs its chunks as child workflows of its own type.

One workflow of 10,000 ``apply_change`` calls reaches 37,000 events, and replaying it after a cache
eviction trips the SDK's deadlock detector (it did, at 37,444 events): a bare-SDK developer splits
such work, so the baseline does, in the plainest way (children of at most ``CHUNK`` targets, all
at once, sharing ``max_parallel`` as ``GuardedChange``'s lanes do).
"""


class BareInput(BaseModel):
    """What the bare workflow deploys, and how many at a time."""

    change_id: str
    kind: str
    params: dict[str, Any]
    targets: list[Target]
    max_parallel: int


@workflow.defn(name="BenchBareRollout")
class BareRolloutWorkflow:
    """The baseline: ``apply_change`` for every target, at most ``max_parallel`` at a time."""

    @workflow.run
    async def run(self, inp: BareInput) -> list[str]:
        """Apply every target with the options ``GuardedChange`` uses; the targets applied."""
        if len(inp.targets) > CHUNK:
            return await self._in_children(inp)
        limit = asyncio.Semaphore(inp.max_parallel)

        async def one(target: Target) -> ApplyResult:
            async with limit:
                return await workflow.execute_activity_method(
                    ChangeActivities.apply_change,
                    ApplyInput(
                        change_id=inp.change_id,
                        kind=inp.kind,
                        step="apply",
                        target=target,
                        params=inp.params,
                        idempotency_key=idempotency_key(inp.change_id, "apply", target.id),
                    ),
                    start_to_close_timeout=MUTATION_TIMEOUT,
                    heartbeat_timeout=MUTATION_HEARTBEAT,
                    retry_policy=MUTATION_RETRY,
                    cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )

        return [r.target_id for r in await asyncio.gather(*(one(t) for t in inp.targets))]

    async def _in_children(self, inp: BareInput) -> list[str]:
        chunks = [inp.targets[i : i + CHUNK] for i in range(0, len(inp.targets), CHUNK)]
        widths = lane_widths(len(chunks), inp.max_parallel)
        done = await asyncio.gather(
            *(
                workflow.execute_child_workflow(
                    BareRolloutWorkflow.run,
                    inp.model_copy(
                        update={"targets": chunk, "max_parallel": widths[i % len(widths)]}
                    ),
                    id=f"{workflow.info().workflow_id}-{i + 1}",
                )
                for i, chunk in enumerate(chunks)
            )
        )
        return [t for chunk in done for t in chunk]


# --------------------------------------------------------------------------------------------------
# Everything below runs outside workflow code only.
# --------------------------------------------------------------------------------------------------

POLICY: dict[str, Any] = {
    "guardrails": [
        {"use": "change-window", "params": {"timezone": "UTC", "allow": ["Mon-Sun 00:00-24:00"]}}
    ]
}
"""Always open: the gate runs (one real check) and proceeds."""


def guarded_and_bare_workers(
    client: Client, settings: Any, guarded_queue: str, bare_queue: str
) -> tuple[Any, Any]:
    """The two workers a bench compares: changeguard's, and a hand-built one for the baseline.

    GuardedChange runs on the worker changeguard builds. The baseline's worker is built by hand
    with the same workflows, activities, interceptors and slot counts, plus its own workflow.
    Neither writes an audit trail, and the open bundle lets every change through: the benches
    measure, they do not judge. Once both are built, the process's garbage collector is tuned as
    ``changeguard worker`` tunes its own (:mod:`worker.gctune`).
    """
    from datetime import timedelta

    from temporalio.worker import Worker

    from activities.audit import AuditActivities, SqliteAuditStore
    from guardrails.base import Services
    from guardrails.bundle import BundleHolder
    from worker import gctune
    from worker import registry as worker_registry
    from worker.main import build_worker, eager_options

    def audit() -> AuditActivities:
        return AuditActivities(SqliteAuditStore(":memory:"))

    open_bundle = BundleHolder.fixed({"unmatched": "allow"})
    guarded = build_worker(
        client, settings, task_queue=guarded_queue, audit=audit(), bundle=open_bundle
    )
    bare = Worker(
        client,
        task_queue=bare_queue,
        workflows=[*worker_registry.WORKFLOWS, BareRolloutWorkflow],
        activities=worker_registry.activities(
            plugins=guarded.plugins,  # the same registries, read once
            services=Services(temporal_client=client, task_queue=bare_queue),
            audit=audit(),
            bundle=open_bundle,
        ),
        interceptors=worker_registry.interceptors(),
        max_cached_workflows=1000,
        max_concurrent_activities=settings.max_concurrent_activities,
        graceful_shutdown_timeout=timedelta(seconds=10),
        **eager_options(settings),
    )
    gctune.tune(settings.gc_tuning)
    return guarded, bare
