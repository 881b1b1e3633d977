"""The chaos campaign: N changes of mixed shapes under a seeded random schedule of faults.

Run the long one with ``make chaos`` (``python -m tests.chaos.campaign --changes 500``); the short
one is ``tests/chaos/test_campaign.py`` in ``make test``. The seed and the whole schedule are
printed first: ``--seed S`` with the same ``--changes`` replays the same shapes and faults at the
same offsets (the interleavings with the workers' own timing differ, as they would in life).

Shapes (each an ``http-deploy`` to hosts of the demo fleet, under the campaign's platform bundle):
``good``, ``bad`` (a version the fleet marks bad: the bake rolls it back), ``approve`` (a rule that
fails, approved through the ``approve`` update), ``refuse`` (the same, a refused ``approve_signal``
and then the deadline), ``abort`` (the ``abort`` update during the bake), ``cancel`` (a raw client's
cancel during the bake), ``queued`` (the targets of a change in flight: it waits behind their
locks), ``long`` (every fleet request through a slow link, so its mutations last seconds).

Faults: ``worker_kill`` (SIGKILL of one, several or all worker processes), ``server_restart``
(SIGKILL of the dev server, restarted on its SQLite file), ``fleet_restart``, ``fleet_5xx`` and
``fleet_slow`` (the fleet's ``/admin/faults``), ``audit_restart`` (PostgreSQL crashed and
restarted: ``docker kill`` + ``docker start`` of its container on the same volume),
``fleet_partition`` and ``audit_partition`` (``docker pause`` of the container for a while; a
process's proxy stops forwarding instead).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.audit import open_audit_store
from tests.chaos.harness import (
    CrashablePostgres,
    DevServer,
    FleetContainer,
    FleetProcess,
    PostgresContainer,
    TcpProxy,
    WorkerSlot,
    build_fleet_image,
    build_postgres_image,
    docker_available,
    worker_env,
)
from tests.chaos.invariants import (
    INVARIANTS,
    ChangeTrace,
    Findings,
    Run,
    check,
    recovery_seconds,
    recovery_times,
    reduce_history,
)
from worker.converter import data_converter
from worker.exit import exit_now
from workflows.models import (
    Approval,
    AuditQuery,
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    OperatorAction,
    OperatorActionResult,
    Phase,
)

T = TypeVar("T")
SHAPES = ("good", "bad", "approve", "refuse", "abort", "cancel", "queued", "long")
FAULTS = (
    "worker_kill",
    "server_restart",
    "fleet_restart",
    "fleet_5xx",
    "fleet_slow",
    "audit_restart",
    "fleet_partition",
    "audit_partition",
)
ENDED = {
    WorkflowExecutionStatus.COMPLETED,
    WorkflowExecutionStatus.FAILED,
    WorkflowExecutionStatus.CANCELED,
    WorkflowExecutionStatus.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT,
}
OPERATORS = {"operators": {"alice": ["web-team"], "bob": ["sre-leads"], "oscar": ["operators"]}}
SLOW_LINK = 4.0
"""Seconds each new connection of a ``long`` change to the fleet waits before it is forwarded."""


def bundle(*, insufficient_max: str) -> dict[str, Any]:
    """The campaign's platform bundle: the floor, an always-open window, and the bake's answers."""
    return {
        "unmatched": "reject",
        "identity": {
            "approvals": "optional",
            "operator_actions": "optional",
            "requests": "optional",
        },
        "guardrails": [
            {"use": "environment-boundary", "owner": "platform", "opt_out": "forbidden"},
            {"use": "target-lock", "owner": "platform"},
            {
                "id": "release-window",
                "use": "change-window",
                "owner": "release-eng",
                "params": {"timezone": "UTC", "allow": ["Mon-Sun 00:00-24:00"]},
            },
        ],
        "signals": [
            {
                "name": "error-rate",
                "source": "fleet",
                "metric": "fleet_error_ratio",
                "degraded_above": 0.05,
                "critical_above": 0.1,
            }
        ],
        # No answer waits for a human: a fault must never leave a change paused for one.
        "responses": [
            {"signal": "error-rate", "state": "degraded", "do": "rollback"},
            {"signal": "error-rate", "state": "critical", "do": "rollback"},
            {
                "signal": "*",
                "state": "insufficient_data",
                "do": "wait",
                "max": insufficient_max,
                "then": "rollback",
            },
        ],
        "pager": "log",
    }


# ------------------------------------------------------------------------------------ schedule


@dataclass(frozen=True)
class Fault:
    """One planned fault: when (seconds after the campaign starts), what, for how long."""

    at: float
    kind: str
    duration: float
    detail: str = ""

    def line(self) -> str:
        return f"  t={self.at:7.1f}s  {self.kind:<16} {self.duration:5.1f}s  {self.detail}"


@dataclass(frozen=True)
class Size:
    """A campaign's size: how many changes, how many at once, how long faults last."""

    changes: int
    in_flight: int
    hosts: int
    workers: int
    partition: tuple[float, float]
    brownout: tuple[float, float]
    down: tuple[float, float]
    gap: tuple[float, float]
    drain: float
    insufficient_max: str
    every_fault_once: bool
    overlap: float = 0.0
    """The chance that a fault starts while the previous one (on another component) lasts."""


SHORT = Size(
    changes=30, in_flight=10, hosts=60, workers=2, partition=(8, 12), brownout=(5, 8),
    down=(1, 3), gap=(2, 4), drain=120, insufficient_max="40s", every_fault_once=True,
)  # fmt: skip
LONG = Size(
    changes=500, in_flight=14, hosts=160, workers=3, partition=(10, 40), brownout=(5, 20),
    down=(1, 8), gap=(2, 6), drain=300, insufficient_max="90s", every_fault_once=False,
    overlap=0.25,
)  # fmt: skip


def make_schedule(rng: random.Random, size: Size, horizon: float) -> list[Fault]:
    """Faults one after another from t=5 s until ``horizon``, drawn from ``rng``."""
    kinds: list[str] = []
    if size.every_fault_once:
        kinds = [*FAULTS, "worker_kill"]
        rng.shuffle(kinds)
    out: list[Fault] = []
    t = 5.0
    while t < horizon or kinds:
        kind = kinds.pop() if kinds else rng.choice(FAULTS)
        if kind.endswith("partition"):
            duration = rng.uniform(*size.partition)
        elif kind in ("fleet_5xx", "fleet_slow"):
            duration = rng.uniform(*size.brownout)
        else:
            duration = rng.uniform(*size.down)
        detail = ""
        if kind == "worker_kill":
            n = rng.choice([1, size.workers] if size.workers > 1 else [1])
            if size.every_fault_once and not any(f.kind == "worker_kill" for f in out):
                n = size.workers  # the short campaign kills them all at least once
            detail = f"workers={n}"
        out.append(Fault(round(t, 1), kind, round(duration, 1), detail))
        if size.overlap and rng.random() < size.overlap:
            t += duration * rng.uniform(0.2, 0.8)  # the next one, on another component, overlaps
            nxt = rng.choice([k for k in FAULTS if _component(k) != _component(kind)])
            kinds.append(nxt)
            continue
        t += duration + rng.uniform(*size.gap)
        if size.every_fault_once and not kinds and t >= horizon:
            break
    return out


def _component(kind: str) -> str:
    return kind.split("_")[0]


# --------------------------------------------------------------------------------- the driver


class Transient(Exception):
    """A client call kept failing past its bound."""


async def retrying(op: Callable[[], Awaitable[T]], what: str, *, within: float = 240) -> T:
    """Call ``op`` until it stops failing for reasons a fault explains (the server away …)."""
    deadline = time.monotonic() + within
    delay = 0.3
    while True:
        try:
            return await op()
        except (
            RPCError,
            TimeoutError,
            ConnectionError,
            httpx.HTTPError,
            WorkflowUpdateRPCTimeoutOrCancelledError,  # the server went away mid-update
        ) as exc:
            if time.monotonic() > deadline:
                raise Transient(f"{what}: {exc}") from exc
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 3.0)


@dataclass
class Result:
    """What a campaign found."""

    seed: int
    size: Size
    schedule: list[Fault]
    outcomes: collections.Counter[str]
    faults: collections.Counter[str]
    findings: Findings
    recovery: tuple[float, str]
    seconds: float
    notes: list[str] = field(default_factory=list)
    traces: list[ChangeTrace] = field(default_factory=list)
    recovery_by_kind: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Per fault type: the longest recovery after one of its faults, and "<change> after <fault>"."""
    world: str = ""
    """How each part ran (container or process)."""

    def by_shape(self) -> dict[str, collections.Counter[str]]:
        """Outcomes per shape."""
        out: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for t in self.traces:
            out[t.shape][t.outcome or "unknown"] += 1
        return dict(out)

    def summary(self) -> str:
        lines = [
            f"chaos campaign seed={self.seed}: {len(self.traces)} changes in {self.seconds:.0f}s",
            "changes by outcome: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            "by shape: "
            + "; ".join(
                f"{shape}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
                for shape, c in sorted(self.by_shape().items())
            ),
            "faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items())),
            "violations: " + ", ".join(f"{k} {self.findings.counts[k]}" for k in INVARIANTS),
            f"longest fault end -> every affected change moving: {self.recovery[0]:.1f}s "
            f"({self.recovery[1] or 'none affected'})",
            "longest by fault type: "
            + ", ".join(f"{k} {v[0]:.1f}s" for k, v in sorted(self.recovery_by_kind.items())),
        ]
        lines += [
            f"  {k}: {v[0]:.1f}s ({v[1]})" for k, v in sorted(self.recovery_by_kind.items()) if v[1]
        ]
        if self.world:
            lines.insert(1, f"world: {self.world}")
        for inv in INVARIANTS:
            for v in self.findings.violations[inv][:10]:
                lines.append(f"  {inv}: {v}")
        for s in self.findings.single_task_failures[:10]:
            lines.append(f"  (single task failure) {s}")
        lines += [f"  note: {n}" for n in self.notes[:30]]
        return "\n".join(lines)


class Campaign:
    """Builds the world, runs the changes and the faults, collects and checks everything."""

    def __init__(
        self, *, seed: int, size: Size, workdir: Path, log: Callable[[str], None] = print
    ) -> None:
        self.seed = seed
        self.size = size
        self.dir = workdir
        self.log = log
        self.rng = random.Random(seed)
        self.task_queue = f"chaos-{seed}"
        self.traces: list[ChangeTrace] = []
        self.in_flight: dict[str, ChangeTrace] = {}
        self.free_hosts: list[str] = []
        self.faults_done: list[tuple[str, datetime, datetime]] = []
        self.fault_counts: collections.Counter[str] = collections.Counter()
        self.notes: list[str] = []
        self.slots: list[WorkerSlot] = []
        self.world = ""
        self._stopping = False
        self._all_started = asyncio.Event()

    # -- the world

    async def _setup(self) -> None:
        d = self.dir
        docker = await asyncio.to_thread(docker_available)
        self.server = DevServer(d / "temporal", container=docker)
        await asyncio.to_thread(self.server.start)
        fleet: FleetProcess = FleetProcess(d / "fleet", hosts=self.size.hosts)
        if docker and os.environ.get("CHANGEGUARD_CHAOS_FLEET", "container") == "container":
            try:
                image = await asyncio.to_thread(build_fleet_image)
                fleet = FleetContainer(d / "fleet", hosts=self.size.hosts, image=image)
            except Exception as exc:  # the process is as good a fleet; say why
                self.notes.append(f"fleet image not built, the fleet runs as a process: {exc}")
        self.fleet = await asyncio.to_thread(fleet.start)
        self.fleet_link = TcpProxy(self.fleet.port).start()
        self.slow_link = TcpProxy(self.fleet_link.port, connect_delay=SLOW_LINK).start()
        self.pg: PostgresContainer | CrashablePostgres = CrashablePostgres(d / "postgres")
        if docker and os.environ.get("CHANGEGUARD_CHAOS_POSTGRES", "container") == "container":
            try:
                image = await asyncio.to_thread(build_postgres_image)
                self.pg = PostgresContainer(d / "postgres", image=image)
            except Exception as exc:  # the process is as good a store; say why
                self.notes.append(f"postgres image not built, PostgreSQL runs as a process: {exc}")
        await asyncio.to_thread(self.pg.start)
        self.audit_dsn = self.pg.dsn
        worker_dsn = self.audit_dsn  # a container: its mapped port; a process: through the proxy
        if isinstance(self.pg, CrashablePostgres):
            self.audit_link = TcpProxy(self.pg.port).start()
            worker_dsn = f"postgresql://postgres@127.0.0.1:{self.audit_link.port}/postgres"
        open_audit_store(self.audit_dsn).close()  # the schema, before any worker races for it
        (d / "operators.yaml").write_text(yaml.safe_dump(OPERATORS))
        policy = d / "platform.yaml"
        policy.write_text(yaml.safe_dump(bundle(insufficient_max=self.size.insufficient_max)))
        env = worker_env(
            address=self.server.address,
            task_queue=self.task_queue,
            audit_url=worker_dsn,
            policy=policy,
            directory=d / "operators.yaml",
        )
        self.slots = [WorkerSlot(f"worker-{i + 1}", env, d) for i in range(self.size.workers)]
        for slot in self.slots:
            slot.spawn()
        self.client = await retrying(
            lambda: Client.connect(self.server.address, data_converter=data_converter),
            "connecting",
        )
        self.free_hosts = [f"web-{i:02d}" for i in range(1, self.size.hosts + 1)]
        self.rng.shuffle(self.free_hosts)
        self.world = (
            f"dev server {self.server.mode}, fleet "
            f"{'container' if isinstance(self.fleet, FleetContainer) else 'process'}, audit store "
            f"{'container' if isinstance(self.pg, PostgresContainer) else 'process'}, "
            f"{len(self.slots)} workers"
        )
        self.log(
            f"chaos: dev server as a {self.server.mode} on {self.server.address}, fleet as a "
            f"{'container' if isinstance(self.fleet, FleetContainer) else 'process'} "
            f"{self.fleet.url} (via {self.fleet_link.port}), audit store as a "
            f"{'container' if isinstance(self.pg, PostgresContainer) else 'process'} "
            f"{worker_dsn}, {len(self.slots)} workers, task queue {self.task_queue}, logs in {d}"
        )

    async def _teardown(self) -> None:
        for slot in self.slots:
            slot.kill()
        for proxy in ("fleet_link", "slow_link", "audit_link"):
            if hasattr(self, proxy):
                getattr(self, proxy).close()
        if hasattr(self, "fleet"):
            self.fleet.kill()
            if isinstance(self.fleet, FleetContainer):
                await asyncio.to_thread(self.fleet.remove)
        if hasattr(self, "pg"):
            await asyncio.to_thread(self.pg.stop)
        if hasattr(self, "server"):
            await asyncio.to_thread(self.server.stop)

    async def _supervise(self) -> None:
        """Respawn every worker that is down and not held down by a fault."""
        while not self._stopping:
            for slot in self.slots:
                if not slot.alive and time.monotonic() >= slot.held_until:
                    if slot.proc is not None and slot.proc.returncode not in (None, -9):
                        self.notes.append(
                            f"{slot.name} exited on its own (status {slot.proc.returncode}) "
                            f"at {datetime.now(UTC):%H:%M:%S}"
                        )
                        slot.held_until = time.monotonic() + 2  # back off a crash loop
                        slot.proc = None
                        continue
                    slot.spawn()
            await asyncio.sleep(0.5)

    # -- faults

    async def _inject(self, fault: Fault) -> None:
        kind, hold = fault.kind, fault.duration
        began = datetime.now(UTC)
        if kind == "worker_kill":
            n = int(fault.detail.split("=")[1])
            for slot in self.rng.sample(self.slots, n):
                slot.kill(hold=hold)
            await asyncio.sleep(hold)
        elif kind == "server_restart":
            await asyncio.to_thread(self.server.kill)
            await asyncio.sleep(hold)
            await asyncio.to_thread(self.server.restart)
        elif kind == "fleet_restart":
            self.fleet.kill()
            await asyncio.sleep(hold)
            await asyncio.to_thread(self.fleet.start)
        elif kind in ("fleet_5xx", "fleet_slow"):
            faults = {"fail_next": 1_000_000} if kind == "fleet_5xx" else {"deploy_delay_ms": 3000}
            await asyncio.to_thread(self.fleet.faults, **faults)
            await asyncio.sleep(hold)
            await asyncio.to_thread(self.fleet.faults)
        elif kind == "audit_restart":
            await asyncio.to_thread(self.pg.crash)
            await asyncio.sleep(hold)
            await asyncio.to_thread(self.pg.restart)
        elif kind == "fleet_partition" and isinstance(self.fleet, FleetContainer):
            await asyncio.to_thread(self.fleet.pause)
            await asyncio.sleep(hold)
            await asyncio.to_thread(self.fleet.unpause)
        elif kind == "fleet_partition":
            self.fleet_link.partition()
            await asyncio.sleep(hold)
            self.fleet_link.heal()
        elif kind == "audit_partition" and isinstance(self.pg, PostgresContainer):
            await asyncio.to_thread(self.pg.pause)
            await asyncio.sleep(hold)
            await asyncio.to_thread(self.pg.unpause)
        elif kind == "audit_partition":
            self.audit_link.partition()
            await asyncio.sleep(hold)
            self.audit_link.heal()
        self.fault_counts[kind] += 1
        self.faults_done.append((f"{kind}@{fault.at:.0f}s", began, datetime.now(UTC)))

    async def _faults(self, schedule: list[Fault], started: float) -> None:
        busy: dict[str, asyncio.Task[None]] = {}  # one fault at a time per component
        for fault in schedule:
            wait = started + fault.at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            component = _component(fault.kind)
            if component in busy:
                await busy[component]
            self.log(f"chaos: t={time.monotonic() - started:6.1f}s inject {fault.line().strip()}")
            busy[component] = asyncio.create_task(self._one_fault(fault))
        await asyncio.gather(*busy.values())

    async def _one_fault(self, fault: Fault) -> None:
        try:
            await self._inject(fault)
        except Exception as exc:  # a fault that could not be healed is a finding of its own
            self.notes.append(f"fault {fault.kind} at {fault.at}s: {exc!r}")

    # -- changes

    def _plan(self, n: int) -> list[str]:
        shapes = [SHAPES[i % len(SHAPES)] for i in range(n)]
        self.rng.shuffle(shapes)
        return shapes

    def _take_hosts(self, shape: str) -> list[str]:
        if shape == "queued":
            holders = [t for t in self.in_flight.values() if t.shape in ("long", "abort", "cancel")]
            holders = holders or list(self.in_flight.values())
            if holders:
                return list(self.rng.choice(holders).targets[:2])
        k = 1 if shape == "long" else self.rng.choice([2, 3])
        taken, self.free_hosts = self.free_hosts[:k], self.free_hosts[k:]
        return taken

    def _request(self, cid: str, shape: str, hosts: list[str]) -> ChangeRequest:
        base = f"http://127.0.0.1:{(self.slow_link if shape == 'long' else self.fleet_link).port}"
        bake = "8s" if shape in ("abort", "cancel") else "1s"
        policy: dict[str, Any] = {}
        if shape in ("approve", "refuse"):
            policy = {
                "guardrails": [
                    {
                        "id": "needs-approval",
                        "use": "http-health",
                        "owner": "web-team",
                        # The fleet answers 200: this rule always fails, and is approvable.
                        "params": {"url": f"{self.fleet.url}/healthz", "expect_status": 418},
                        "opt_out": {"approvers": ["sre-leads"]},
                    }
                ]
            }
        doc: dict[str, Any] = {
            "change_id": cid,
            "kind": "http-deploy",
            "summary": f"chaos {shape}",
            "requester": "alice",
            "team": "web",
            "environment": "prod",
            "targets": [{"id": h} for h in hosts],
            "params": {"base_url": base, "version": f"v-{cid}", "timeout": 30},
            "rollout": {"waves": ["1", "100%"], "max_parallel": 2, "bake": bake},
            "policy": policy,
        }
        if shape == "refuse":
            doc["deadline"] = (datetime.now(UTC) + timedelta(seconds=25)).isoformat()
        return ChangeRequest.model_validate(doc)

    async def _status(self, handle: WorkflowHandle[Any, Any]) -> ChangeStatus:
        return await retrying(
            lambda: handle.query(
                "status", result_type=ChangeStatus, rpc_timeout=timedelta(seconds=5)
            ),
            f"status of {handle.id}",
        )

    async def _until_phase(
        self, handle: WorkflowHandle[Any, Any], phases: set[Phase], within: float = 900
    ) -> ChangeStatus | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            status = await self._status(handle)
            if status.phase in phases:
                return status
            if status.phase.value in ("Completed", "RolledBack", "Aborted", "Rejected", "Failed"):
                return None
            await asyncio.sleep(0.5)
        return None

    async def _change(self, trace: ChangeTrace) -> None:
        cid = trace.change_id
        request = self._request(cid, trace.shape, trace.targets)
        if trace.shape == "bad":
            await retrying(
                lambda: asyncio.to_thread(self._mark_bad, f"v-{cid}"), "marking", within=120
            )

        async def start() -> WorkflowHandle[Any, ChangeResult]:
            try:
                return await self.client.start_workflow(
                    "GuardedChange",
                    request,
                    id=cid,
                    task_queue=self.task_queue,
                    result_type=ChangeResult,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    rpc_timeout=timedelta(seconds=10),
                )
            except WorkflowAlreadyStartedError:  # our own earlier attempt reached the server
                return self.client.get_workflow_handle(cid, result_type=ChangeResult)

        handle = await retrying(start, f"starting {cid}")
        trace.started = True
        if trace.shape == "approve":
            status = await self._until_phase(handle, {Phase.AWAITING_APPROVAL})
            if status is not None and status.report is not None:
                approval = Approval(
                    guardrails=["needs-approval"],
                    approver="bob",
                    reason="chaos: approved",
                    report_hash=status.report.report_hash,
                )
                try:
                    await retrying(
                        lambda: handle.execute_update(
                            "approve",
                            approval,
                            id=f"{cid}-approve",
                            rpc_timeout=timedelta(seconds=20),
                        ),
                        f"approving {cid}",
                    )
                    trace.approvals.append("bob")
                except WorkflowUpdateFailedError as exc:
                    trace.note = f"approval refused: {exc.cause}"
        elif trace.shape == "refuse":
            status = await self._until_phase(handle, {Phase.AWAITING_APPROVAL})
            if status is not None and status.report is not None:
                approval = Approval(
                    guardrails=["needs-approval"],
                    approver="mallory",  # not in the directory: refused and recorded
                    reason="chaos: not allowed",
                    report_hash=status.report.report_hash,
                )
                await retrying(lambda: handle.signal("approve_signal", approval), f"signal {cid}")
                trace.refused.append("mallory")
        elif trace.shape in ("abort", "cancel"):
            status = await self._until_phase(handle, {Phase.BAKING})
            if status is not None and trace.shape == "abort":
                action = OperatorAction(operator="oscar", reason="chaos: abort")
                try:
                    answer = await retrying(
                        lambda: handle.execute_update(
                            "abort",
                            action,
                            id=f"{cid}-abort",
                            result_type=OperatorActionResult,
                            rpc_timeout=timedelta(seconds=20),
                        ),
                        f"aborting {cid}",
                    )
                    if answer.accepted:
                        trace.actions.append("abort")
                except WorkflowUpdateFailedError as exc:
                    trace.note = f"abort refused: {exc.cause}"
            elif status is not None:
                await retrying(handle.cancel, f"cancelling {cid}")
                trace.cancelled = True
        try:
            result = await retrying(handle.result, f"result of {cid}", within=600)
            trace.outcome = result.outcome.value
        except WorkflowFailureError as exc:
            trace.outcome = "cancelled" if trace.cancelled else f"error: {exc.cause}"

    def _mark_bad(self, version: str) -> None:
        httpx.post(
            f"{self.fleet.url}/versions/{version}", json={"bad": True}, timeout=5, trust_env=False
        ).raise_for_status()

    async def _run_change(self, trace: ChangeTrace) -> None:
        self.in_flight[trace.change_id] = trace
        try:
            await self._change(trace)
        except Exception as exc:
            trace.note = f"driver: {exc!r}"[:300]
        finally:
            del self.in_flight[trace.change_id]
            if trace.shape != "queued":
                self.free_hosts.extend(trace.targets)

    async def _changes(self, shapes: list[str], started: float, spread: float) -> None:
        """Start every change (at most ``in_flight`` at once), then wait for them all."""
        tasks = []
        try:
            for i, shape in enumerate(shapes):
                due = started + spread * i / max(1, len(shapes))
                # Polling, not an Event: the conditions change in many places and time passes.
                while (  # noqa: ASYNC110
                    len(self.in_flight) >= self.size.in_flight
                    or time.monotonic() < due
                    or len(self.free_hosts) < 3
                ):
                    await asyncio.sleep(0.2)
                hosts = self._take_hosts(shape)
                trace = ChangeTrace(
                    f"c{self.seed}-{i:04d}-{uuid.uuid4().hex[:4]}", shape, hosts, ["1", "100%"]
                )
                self.traces.append(trace)
                tasks.append(asyncio.create_task(self._run_change(trace)))
        finally:
            self._all_started.set()
        await asyncio.gather(*tasks)

    # -- collection

    async def _runs(self) -> list[Run]:
        runs = []
        query = f"TaskQueue = '{self.task_queue}'"
        listed = await retrying(
            lambda: _collect(self.client.list_workflows(query)), "listing workflows"
        )
        for wf in listed:
            handle = self.client.get_workflow_handle(wf.id, run_id=wf.run_id)
            events = await retrying(_events_of(handle), f"history of {wf.id}")
            runs.append(
                reduce_history(
                    wf.id,
                    wf.run_id,
                    events,
                    open_=wf.status not in ENDED,
                    start=wf.start_time,
                    close=wf.close_time,
                )
            )
        return runs

    async def run(self) -> Result:
        began = time.monotonic()
        spread = self.size.changes * 3.0 if self.size.every_fault_once else self.size.changes * 1.5
        shapes = self._plan(self.size.changes)
        schedule = make_schedule(random.Random(self.seed), self.size, horizon=spread)
        self.log(f"chaos: seed={self.seed} changes={self.size.changes} shapes={shapes}")
        self.log("chaos: schedule (replay with --seed):\n" + "\n".join(f.line() for f in schedule))
        try:
            await self._setup()
            supervisor = asyncio.create_task(self._supervise())
            started = time.monotonic()
            faults = asyncio.create_task(self._faults(schedule, started))
            changes = asyncio.create_task(self._changes(shapes, started, spread))
            await faults
            await self._all_started.wait()  # the drain begins once every change has started
            try:
                await asyncio.wait_for(asyncio.shield(changes), timeout=self.size.drain)
            except TimeoutError:
                self.notes.append(
                    f"{len(self.in_flight)} changes still running {self.size.drain:g}s after "
                    f"the last fault and the last start: {sorted(self.in_flight)[:20]}"
                )
            changes.cancel()
            with contextlib.suppress(BaseException):
                await changes
            deploys = await asyncio.to_thread(self._deploys)
            store = open_audit_store(self.audit_dsn)
            try:
                records = await asyncio.to_thread(store.list, AuditQuery(limit=100_000))
            finally:
                store.close()
            runs = await self._runs()
            findings = check(self.traces, deploys, records, runs)
            recovery = recovery_seconds(self.faults_done, runs)
            by_kind: dict[str, tuple[float, str]] = {}
            for label, (seconds, change) in recovery_times(self.faults_done, runs).items():
                kind = label.split("@", 1)[0]
                if kind not in by_kind or seconds > by_kind[kind][0]:
                    by_kind[kind] = (seconds, f"{change} after {label}")
            self._stopping = True
            supervisor.cancel()
            for slot in self.slots:
                crashed = slot.crash_count()
                if crashed:
                    self.notes.append(
                        f"{slot.name}: {crashed} traceback(s) in its log beyond failed attempts"
                    )
        finally:
            self._stopping = True
            await self._teardown()
        outcomes = collections.Counter(t.outcome or "unknown" for t in self.traces)
        for t in self.traces:
            if t.note:
                self.notes.append(f"{t.change_id} ({t.shape}): {t.note}")
        return Result(
            self.seed,
            self.size,
            schedule,
            outcomes,
            self.fault_counts,
            findings,
            recovery,
            time.monotonic() - began,
            self.notes,
            self.traces,
            by_kind,
            self.world,
        )

    def _deploys(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.fleet.url}/deploys", timeout=30, trust_env=False)
        response.raise_for_status()
        entries: list[dict[str, Any]] = response.json()
        return entries


async def _collect(it: Any) -> list[Any]:
    return [x async for x in it]


def _events_of(handle: WorkflowHandle[Any, Any]) -> Callable[[], Awaitable[list[Any]]]:
    return lambda: _collect(handle.fetch_history_events())


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.chaos.campaign [--changes N] [--seed S]``; exit 1 on any violation."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.campaign")
    parser.add_argument("--changes", type=int, default=LONG.changes)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--short", action="store_true", help="the short campaign's size")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    base = SHORT if args.short else LONG
    size = Size(**{**base.__dict__, "changes": args.changes})
    workdir = Path(tempfile.mkdtemp(prefix=f"changeguard-chaos-{seed}-"))
    result = asyncio.run(Campaign(seed=seed, size=size, workdir=workdir).run())
    print(result.summary())
    sys.stdout.flush()
    return 1 if result.findings.total else 0


if __name__ == "__main__":
    code = main()
    exit_now(code)  # the SDK's exit-time crash (worker/exit.py)
