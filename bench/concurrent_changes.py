"""Bench: 100 concurrent changes of 20 targets each against 100 bare-SDK workflows, in one run.

Usage::

    .venv/bin/python bench/concurrent_changes.py [--changes C] [--targets T] [--max-parallel P]
                                         [--deploy-delay-ms D] [--rollbacks K] [--repeats R]

On a real Temporal dev server and the demo fleet with C x T hosts (its own process), one worker
process each for ``GuardedChange`` (the worker ``build_worker`` builds) and for the bare workflow
of ``bench/baseline.py`` (same activities, interceptors and slot counts). Each change has hosts of
its own (no target-lock waits). Three measurements, interleaved R times after a warm-up:

1. ``guarded``: C ``GuardedChange`` runs started at once (``http-deploy``, one wave, P at a time,
   no bake, an always-open change window): wall time from the first start to the last result;
2. ``bare``: C ``BenchBareRollout`` runs of the same ``apply_change`` calls started at once;
3. ``rollback``: C ``GuardedChange`` runs again; K of them (spread over the C) get a ``rollback``
   update as soon as their first target is applied (its host runs the new version on the fleet:
   an ``apply_change_many`` chunk reports its targets only when it ends), while the others keep
   deploying. For each,
   the time from sending the update to the start of its first ``revert_change`` (the history's
   ``ActivityTaskStarted``; one clock, the machine's) is recorded.

The last lines are ``concurrent_vs_bare_ratio=<guarded median / bare median>`` and
``rollback_to_first_compensation_p95_s=<p95 over every rollback of every repeat>``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temporalio import workflow

# Named concurrent_changes.py, not concurrent.py: a script's directory comes first on sys.path, and
# a bench/concurrent.py would shadow the standard library's concurrent (asyncio imports it).
if not workflow.unsafe.in_sandbox():
    ROOT = str(Path(__file__).resolve().parent.parent)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

with workflow.unsafe.imports_passed_through():
    from baseline import POLICY, BareInput, BareRolloutWorkflow, guarded_and_bare_workers
    from harness import check_ledger, dev_server, fleet, ledger_keys, progress, quiet_logs

    from workflows.models import Target

if TYPE_CHECKING:
    from temporalio.client import Client


def hosts_of(change: int, targets: int) -> list[str]:
    """The fleet's hosts of change ``change`` (0-based): ``targets`` consecutive ones."""
    return [f"web-{change * targets + i:02d}" for i in range(1, targets + 1)]


def p95(values: list[float]) -> float:
    """The 95th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


async def measure(client: Client, url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then R interleaved repeats of guarded, bare and rollback."""
    import httpx
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.common import WorkflowIDReusePolicy

    from worker.settings import Settings
    from workflows import names
    from workflows.guarded_change import GuardedChangeWorkflow
    from workflows.models import ChangeRequest, ChangeResult, OperatorAction, Outcome

    tag = uuid.uuid4().hex[:6]
    started: dict[str, str] = {}  # a workflow id of each kind of run, for its shape
    guarded_queue, bare_queue = f"bench-cc-guarded-{tag}", f"bench-cc-bare-{tag}"
    settings = Settings.from_env(env={})
    seq = iter(range(1, 1_000_000))
    guarded_worker, bare_worker = guarded_and_bare_workers(
        client, settings, guarded_queue, bare_queue
    )

    def request(i: int, n: int, version: str) -> ChangeRequest:
        return ChangeRequest(
            change_id=f"bench-cc-{tag}-{next(seq)}",
            kind="http-deploy",
            summary="concurrent bench",
            requester="bench",
            team=f"team-{i % 10}",
            environment="prod",
            targets=[Target(id=h) for h in hosts_of(i, n)],
            params={"base_url": url, "version": version},
            rollout={"waves": ["100%"], "max_parallel": args.max_parallel, "bake": "0s"},
            policy=POLICY,
        )

    async def guarded(changes: int, n: int, rollbacks: int = 0) -> tuple[float, list[float]]:
        version = f"9.{tag}.{next(seq)}"
        reqs = [request(i, n, version) for i in range(changes)]
        started["guarded"] = reqs[0].change_id or ""
        stride = changes // rollbacks if rollbacks else 0
        chosen = {reqs[i].change_id for i in range(0, changes, stride)} if stride else set()
        latencies: list[float] = []
        t0 = time.perf_counter()
        handles = await asyncio.gather(
            *(
                client.start_workflow(
                    GuardedChangeWorkflow.run,
                    r,
                    id=r.change_id or "",
                    task_queue=guarded_queue,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                )
                for r in reqs
            )
        )

        first_host = {r.change_id: r.targets[0].id for r in reqs}

        async def roll_back(handle: Any) -> None:
            # The fleet, not the status: a chunk of apply_change_many (or a batch) reports its
            # targets when it ends, and the first target is applied well before that.
            async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60) as http:
                while True:
                    host = (await http.get(f"/hosts/{first_host[handle.id]}")).json()
                    if host.get("version") == version:
                        break
                    await asyncio.sleep(0.05)
            sent = time.time()
            try:
                await handle.execute_update(
                    GuardedChangeWorkflow.rollback,
                    OperatorAction(operator="bench", reason="bench rollback latency"),
                )
            except WorkflowUpdateFailedError as exc:  # e.g. its rollout ended first
                raise RuntimeError(
                    f"{handle.id}: the rollback was refused ({exc.cause}); the change finished "
                    "before it arrived: give each change more --targets or --deploy-delay-ms"
                ) from exc
            ended = await handle.result()
            if ended.outcome is not Outcome.ROLLED_BACK:
                raise RuntimeError(
                    f"{handle.id}: rollback accepted, but it ended {ended.outcome.value}: "
                    f"{ended.message}"
                )
            for event in (await handle.fetch_history()).events:
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    attrs = event.activity_task_scheduled_event_attributes
                    if attrs.activity_type.name == names.REVERT_CHANGE:
                        scheduled = event.event_id
                        break
            else:
                raise RuntimeError(f"{handle.id}: rolled back without a revert_change")
            for event in (await handle.fetch_history()).events:
                if (
                    event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
                    and event.activity_task_started_event_attributes.scheduled_event_id == scheduled
                ):
                    latencies.append(event.event_time.ToDatetime().timestamp() - sent)
                    return
            # A started event is written when the attempt ends; the completed one then exists.
            raise RuntimeError(f"{handle.id}: the first revert_change never started")

        rolling = [roll_back(h) for h in handles if h.id in chosen]
        results = await asyncio.gather(*(h.result() for h in handles), *rolling)
        elapsed = time.perf_counter() - t0
        for r, result in zip(reqs, results[: len(reqs)], strict=True):
            assert isinstance(result, ChangeResult)
            expect = Outcome.ROLLED_BACK if r.change_id in chosen else Outcome.COMPLETED
            if result.outcome is not expect:
                raise RuntimeError(f"{r.change_id}: {result.outcome}: {result.message}")
            if expect is Outcome.COMPLETED:
                keys = await ledger_keys(url, f"{r.change_id}:apply:")
                check_ledger(keys, r.change_id or "", [t.id for t in r.targets], "guarded")
        return elapsed, latencies

    async def bare(changes: int, n: int) -> float:
        version = f"9.{tag}.{next(seq)}"
        inputs = [
            BareInput(
                change_id=f"bench-cc-bare-{tag}-{next(seq)}",
                kind="http-deploy",
                params={"base_url": url, "version": version},
                targets=[Target(id=h) for h in hosts_of(i, n)],
                max_parallel=args.max_parallel,
            )
            for i in range(changes)
        ]
        started["bare"] = inputs[0].change_id
        t0 = time.perf_counter()
        handles = await asyncio.gather(
            *(
                client.start_workflow(
                    BareRolloutWorkflow.run, inp, id=inp.change_id, task_queue=bare_queue
                )
                for inp in inputs
            )
        )
        results = await asyncio.gather(*(h.result() for h in handles))
        elapsed = time.perf_counter() - t0
        for inp, res in zip(inputs, results, strict=True):
            if len(res) != n:
                raise RuntimeError(f"bare {inp.change_id}: {len(res)} results for {n} targets")
        return elapsed

    async def shape(workflow_id: str) -> dict[str, int]:
        """Activities, workflow tasks and workflows of one run, its children's included."""
        counts = {"activities": 0, "workflow tasks": 0, "workflows": 1}
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                counts["activities"] += 1
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                counts["workflow tasks"] += 1
            elif event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                child = await shape(
                    event.child_workflow_execution_started_event_attributes.workflow_execution.workflow_id
                )
                counts = {k: counts[k] + child[k] for k in counts}
        return counts

    figures: dict[str, Any] = {"guarded": [], "bare": [], "rollback": [], "latencies": []}
    async with guarded_worker, bare_worker:
        progress("warm-up (2 changes each, discarded)…")
        await guarded(2, args.targets)
        await bare(2, args.targets)
        for label, workflow_id in started.items():
            one = await shape(workflow_id)
            figures[f"shape {label}"] = one
            progress(f"  one {label} change: " + ", ".join(f"{v} {k}" for k, v in one.items()))
        for r in range(1, args.repeats + 1):
            g, _ = await guarded(args.changes, args.targets)
            figures["guarded"].append(g)
            progress(f"  repeat {r}/{args.repeats} guarded  {g:7.2f} s")
            b = await bare(args.changes, args.targets)
            figures["bare"].append(b)
            progress(f"  repeat {r}/{args.repeats} bare     {b:7.2f} s")
            rb, lat = await guarded(args.changes, args.targets, args.rollbacks)
            figures["rollback"].append(rb)
            figures["latencies"].extend(lat)
            progress(
                f"  repeat {r}/{args.repeats} rollback {rb:7.2f} s  first compensation after "
                f"{statistics.median(lat):.2f} s median, {max(lat):.2f} s max"
            )
    return figures


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Start the fleet and the dev server, measure, stop both."""
    quiet_logs()
    hosts = args.changes * args.targets
    with tempfile.TemporaryDirectory(prefix="bench-concurrent-") as tmp:
        async with (
            fleet(Path(tmp) / "fleet.db", hosts, deploy_delay_ms=args.deploy_delay_ms) as url,
            # Fairness between teams (workflows/priorities.py); priority is on by default.
            dev_server("--dynamic-config-value", "matching.enableFairness=true") as env,
        ):
            return await measure(env.client, url, args)


def report(figures: dict[str, Any], args: argparse.Namespace) -> None:
    """Print the table and the machine-readable lines."""
    g, b, rb = (statistics.median(figures[k]) for k in ("guarded", "bare", "rollback"))
    lat = figures["latencies"]
    print()
    print(
        f"Concurrent bench: {args.changes} changes x {args.targets} targets, max_parallel "
        f"{args.max_parallel}, deploy delay {args.deploy_delay_ms} ms, {args.rollbacks} rollbacks "
        f"per repeat, R={args.repeats}"
    )
    for label, runs in (("guarded", "guarded"), ("bare", "bare"), ("rollback", "rollback")):
        values = figures[runs]
        print(
            f"{label:<9} median {statistics.median(values):7.2f} s   min {min(values):7.2f}   "
            f"max {max(values):7.2f}"
        )
    print(
        f"first compensation after a rollback request: median {statistics.median(lat):.2f} s, "
        f"p95 {p95(lat):.2f} s, max {max(lat):.2f} s over {len(lat)} rollbacks"
    )
    for label in ("guarded", "bare"):
        one = figures[f"shape {label}"]
        print(f"one {label} change: " + ", ".join(f"{v} {k}" for k, v in one.items()))
    print(f"rollback run / guarded run = {rb / g:.2f}")
    print(f"concurrent_vs_bare_ratio={g / b:.2f}")
    print(f"rollback_to_first_compensation_p95_s={p95(lat):.2f}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--changes", type=int, default=100, metavar="C", help="default 100")
    parser.add_argument("--targets", type=int, default=20, metavar="T", help="default 20")
    parser.add_argument("--max-parallel", type=int, default=5, metavar="P", help="default 5")
    parser.add_argument("--deploy-delay-ms", type=int, default=100, metavar="D", help="100")
    parser.add_argument("--rollbacks", type=int, default=10, metavar="K", help="default 10")
    parser.add_argument("--repeats", type=int, default=2, metavar="R", help="default 2")
    args = parser.parse_args(argv)
    if not 1 <= args.rollbacks <= args.changes or args.repeats < 1 or args.targets < 2:
        parser.error("need 1 <= --rollbacks <= --changes, --repeats >= 1, --targets >= 2")
    return args


def main() -> int:
    """Run the bench; the last line is ``rollback_to_first_compensation_p95_s=<x>``."""
    args = parse_args()
    report(asyncio.run(bench(args)), args)
    return 0


if __name__ == "__main__" and not workflow.unsafe.in_sandbox():
    from worker.exit import run_and_exit

    run_and_exit(main)  # the SDK's exit-time crash (worker/exit.py)
