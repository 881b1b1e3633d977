"""Capture one real run per workflow branch on a dev server and store every history it made.

    python -m tests.replay.capture [--out DIR]      # or: make histories

Starts the embedded dev server (loopback, in memory, nothing downloaded), runs a worker built by
``build_worker`` with the fake plug-ins of ``tests/fakes.py`` (plus ``target-lock`` and three
capture-only guardrails below), drives every entry of :data:`BRANCHES` concurrently, checks that
each ended the way its entry says, and writes the history of every workflow run it started
(``GuardedChange``, its ``GuardrailGate`` children, ``TargetLock``) as
``<branch>__<workflow-type>__<n>.json``, ``n`` counting that branch's runs of the type in start
order. Files are the JSON of ``WorkflowHistory.to_json()`` (what ``changeguard history export``
writes and ``changeguard replay`` reads). The histories are written only when every branch
behaved, and they replace the directory's old ``*.json`` files; they are replayed once at the end.

Every id is derived from the branch name (change ``<branch>.a``, targets ``<branch>.t1`` …), so a
re-capture yields the same file names. Adding a branch is one :class:`Branch` entry; a branch that
needs operator actions passes a ``steer`` coroutine, one with several changes its own ``drive``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

from temporalio import activity
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.testing import WorkflowEnvironment

from activities.change_events import ChangeEventSink
from guardrails.base import CheckContext, EmptyParams, Guardrail
from guardrails.builtin.change_window import ChangeWindow
from guardrails.builtin.target_lock import TargetLock
from tests import fakes
from tests.fakes import Ledger, RecordingKind, Switch
from tests.helpers import OPEN_BUNDLE
from tests.replay.identity_branch import signed_approval
from tests.replay.stop_branches import (
    late_stop,
    rejected_stop,
    stop_cancels,
    stop_cancels_batches,
    stop_cancels_chunks,
)
from tests.servers import EventReceiver
from worker.converter import data_converter
from worker.devserver import STARTUP_TIMEOUT, temporal_binary
from worker.main import build_worker
from worker.replay import history_files, replay_files
from worker.settings import Settings
from worker.telemetry import client_plugins
from workflows import ids
from workflows import search_attributes as sa
from workflows.models import (
    Approval,
    ApprovalResult,
    Category,
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    CheckResult,
    OperatorAction,
    OperatorActionResult,
    Outcome,
    Phase,
    RecheckInput,
    lock_id,
)

OUT = Path(__file__).resolve().parent / "histories"
TASK_QUEUE = "changeguard-capture"
PHASE_TIMEOUT = 30.0
OPERATORS = "operators:\n  sre-lead: [sre-leads]\n  release-manager: [release-managers]\n"
"""The operator directory the capture's worker reads (approvers for approval branches)."""
DEADLINE = 10.0
"""Seconds to the deadline of branches that wait for it: their gates must have answered by then."""

# ------------------------------------------------------------------ capture-only guardrails


class SoonWindow(Guardrail[EmptyParams]):
    """Asks a change to wait 2 s on its first gate and passes after: a real timer fires."""

    name = "soon-window"
    category = Category.TIMING
    default_owner = "release-eng"
    seen: ClassVar[set[str]] = set()

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        """Wait on the first gate of each change, pass on the next."""
        if ctx.change.change_id not in SoonWindow.seen:
            SoonWindow.seen.add(ctx.change.change_id)
            return ctx.wait("window opens soon", remedy="wait", retry_after=ctx.now + _s(2))
        return ctx.passed("window open")


class DueWindow(Guardrail[EmptyParams]):
    """Asks a change to wait until a moment already past on its first gate (a slow gate), then passes."""

    name = "due-window"
    category = Category.TIMING
    default_owner = "release-eng"
    seen: ClassVar[set[str]] = set()

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        """Wait until a second ago on the first gate of each change, pass on the next."""
        if ctx.change.change_id not in DueWindow.seen:
            DueWindow.seen.add(ctx.change.change_id)
            return ctx.wait("window opened already", remedy="wait", retry_after=ctx.now - _s(1))
        return ctx.passed("window open")


class MidRolloutFreeze(Guardrail[EmptyParams]):
    """Passes the first gate of each change and fails every later one (a freeze mid-rollout)."""

    name = "mid-rollout-freeze"
    category = Category.TIMING
    default_owner = "release-eng"
    seen: ClassVar[set[str]] = set()

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        """Pass once per change, then fail."""
        if ctx.change.change_id not in MidRolloutFreeze.seen:
            MidRolloutFreeze.seen.add(ctx.change.change_id)
            return ctx.passed("no freeze")
        return ctx.failed("a freeze began mid-rollout", remedy="wait for the freeze to end")


class SlowCheck(Guardrail[EmptyParams]):
    """Answers after 3 s: with a 1 s timeout in the policy it times out (bounded, unlike ``hang``)."""

    name = "slow-check"
    category = Category.HEALTH
    default_owner = "service-owners"

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        """Sleep past the policy's timeout."""
        await asyncio.sleep(3)
        return ctx.passed("late")


class FirstGateDown(Guardrail[EmptyParams]):
    """Raises in every attempt of a change's first gate (its dependency is down), passes after."""

    name = "first-gate-down"
    category = Category.TARGET_STATE
    default_owner = "infra"

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        """Raise under the first gate's child workflow, pass under any later one."""
        if activity.info().workflow_id == ids.gate_id(ctx.change.change_id, 1):
            raise RuntimeError("the state service is down")
        return ctx.passed("the state service answers")


def guardrails() -> Any:
    """The fake registry plus target-lock and the capture-only guardrails."""
    registry = fakes.guardrails()
    capture_only = (SoonWindow, DueWindow, MidRolloutFreeze, SlowCheck, FirstGateDown)
    for g in (TargetLock, ChangeWindow, *capture_only):
        registry.register(g)
    return registry


def _s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def _quiet_runtime() -> Runtime:
    quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
    return Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet)))


# ------------------------------------------------------------------ the branch table

Steer = Callable[["Capture", WorkflowHandle[Any, ChangeResult]], Awaitable[None]]
Drive = Callable[["Capture", "Branch"], Awaitable[None]]

PASS = [{"use": "always-pass"}]


def lock_rules(watch_every: str) -> list[dict[str, Any]]:
    """A policy of target-lock alone, its lease checked every ``watch_every``."""
    return [{"use": "target-lock", "params": {"watch_every": watch_every}}]


@dataclass(frozen=True)
class Branch:
    """One branch of today's workflow code and how to drive a real change down it.

    Attributes:
        name: snake_case; prefixes the file names and every id the branch uses.
        expect: the outcome the change must end with (``None``: its ``drive`` checks).
        rules: the inline policy's guardrail rules.
        params: the recording change kind's params (``fail_apply``, ``fail_revert``, ``delay``).
        targets: how many targets (``<name>.t1`` …).
        waves / bake / max_parallel: the rollout.
        kind: the change kind.
        deadline_in: seconds from start to the change's deadline (default: the workflow's 24 h).
        steer: operator actions while the change runs (signals, cancel).
        policy_extra: more policy keys (signals, responses, pager).
        drive: replaces the whole default drive (for branches with several changes).
    """

    name: str
    expect: Outcome | None
    rules: list[dict[str, Any]] = field(default_factory=lambda: list(PASS))
    params: dict[str, Any] = field(default_factory=dict)
    targets: int = 2
    waves: list[str] = field(default_factory=lambda: ["100%"])
    bake: str = "0s"
    max_parallel: int = 5
    kind: str = "recording"
    deadline_in: float | None = None
    steer: Steer | None = None
    drive: Drive | None = None
    policy_extra: dict[str, Any] = field(default_factory=dict)


async def recheck_until_fixed(cap: Capture, handle: WorkflowHandle[Any, ChangeResult]) -> None:
    """Blocked; a recheck that still fails; fix the cause; a recheck that proceeds."""
    await cap.until(handle, lambda s: s.phase is Phase.BLOCKED)
    await handle.signal("recheck", RecheckInput(requested_by="capture", reason="try again"))
    await cap.until(handle, lambda s: s.phase is Phase.BLOCKED and s.gate_runs == 2)
    Switch.outcome = "pass"
    await handle.signal("recheck", RecheckInput(requested_by="capture", reason="fixed"))


def cancel_when(ready: Callable[[ChangeStatus], bool]) -> Steer:
    """Cancel the change once its status satisfies ``ready``."""

    async def steer(cap: Capture, handle: WorkflowHandle[Any, ChangeResult]) -> None:
        await cap.until(handle, ready)
        await handle.cancel()

    return steer


async def lock_conflict(cap: Capture, branch: Branch) -> None:
    """Two changes share a target: the second queues behind the first and is handed the lock.

    The first completes and releases its locks; the lock of the shared target is handed to the
    queued second change (a continue-as-new with the new holder, and a ``recheck`` signal), which
    then takes its other lock and completes. No operator recheck is needed. The second starts once
    the first holds its locks, so the same change wins every capture; the lease watch is longer
    than any hold, so no watch races a release.
    """
    a = cap.request(branch, "a", targets=["t1", "t2"], params={"delay": 5})
    b = cap.request(branch, "b", targets=["t2", "t3"], params={"delay": 0.2})
    first = await cap.start(a)
    await cap.until(first, lambda s: s.phase is Phase.EXECUTING)
    second = await cap.start(b)
    queued = await cap.until(second, lambda s: s.phase is Phase.WAITING)
    assert queued.report is not None and "is locked by change" in queued.report.checks[0].reason
    await cap.expect(first, Outcome.COMPLETED)
    await cap.expect(second, Outcome.COMPLETED)


async def abort_when_paused(cap: Capture, handle: WorkflowHandle[Any, ChangeResult]) -> None:
    """Past its point of no return the change pauses for a human: an operator aborts."""
    await cap.until(handle, lambda s: s.phase is Phase.PAUSED)
    action = OperatorAction(operator="capture", reason="replay capture: repair by hand")
    await handle.execute_update("abort", action, result_type=OperatorActionResult)


async def change_events(cap: Capture, branch: Branch) -> None:
    """A worker with a change-event sink: the change hands its events to a ``ChangeEvents`` child.

    Started, two waves' starts and ends, the outcome: six events delivered in order to an HTTP
    receiver; the child ends after the outcome. Its own worker (and task queue) holds the sink.
    """
    queue = f"{cap.task_queue}-events"
    settings = Settings.from_env(
        env={
            "CHANGEGUARD_AUDIT_URL": f"sqlite:///{cap.state / 'audit.db'}",
            "CHANGEGUARD_DIRECTORY": f"yaml:{cap.state / 'operators.yaml'}",
        },
        task_queue=queue,
    )
    with EventReceiver() as receiver:
        sink = ChangeEventSink(url=receiver.url, routing_key="capture", link=None)
        async with build_worker(
            cap.client,
            settings,
            guardrails=guardrails(),
            kinds=fakes.kinds(many=True),
            bundle=OPEN_BUNDLE,
            change_events=sink,
        ):
            request = cap.request(branch)
            handle = await cap.client.start_workflow(
                "GuardedChange",
                request,
                id=request.change_id,
                task_queue=queue,
                result_type=ChangeResult,
            )
            await cap.expect(handle, Outcome.COMPLETED)
            events = cap.client.get_workflow_handle(f"{request.change_id}/events")
            delivered = await events.result()
    assert delivered == "6 delivered, 0 dropped, 0 refused", delivered
    assert [b["payload"]["custom_details"]["event"] for b in receiver.bodies] == [
        "started",
        "wave_started",
        "wave_finished",
        "wave_started",
        "wave_finished",
        "outcome",
    ]


async def refused_start(cap: Capture, branch: Branch) -> None:
    """A raw client's start that is no change request ends rejected at once (no task fails)."""
    handle = await cap.client.start_workflow(
        "GuardedChange",
        {"kind": "recording", "team": "x" * 300},
        id=f"{branch.name}.a",
        task_queue=cap.task_queue,
        result_type=ChangeResult,
    )
    await cap.expect(handle, Outcome.REJECTED)


async def change_id_reused(cap: Capture, branch: Branch) -> None:
    """A change completes; a second run under its id (any client) ends rejected before the gate."""
    request = cap.request(branch)
    await cap.expect(await cap.start(request), Outcome.COMPLETED)
    again = await cap.client.start_workflow(
        "GuardedChange",
        request.model_dump(mode="json", exclude={"change_id"}),
        id=request.change_id or "",
        task_queue=cap.task_queue,
        result_type=ChangeResult,
    )
    await cap.expect(again, Outcome.REJECTED)


async def refused_signals(cap: Capture, handle: WorkflowHandle[Any, ChangeResult]) -> None:
    """Malformed signals and updates while awaiting approval are recorded or refused; then abort."""
    await cap.until(handle, lambda s: s.phase is Phase.AWAITING_APPROVAL)
    await handle.signal("approve_signal", args=[])
    await handle.signal("recheck", 42)
    await cap.until(
        handle, lambda s: len(s.rejected_approvals) == 1 and len(s.refused_signals) == 1
    )
    try:
        await handle.execute_update("abort", None)
    except WorkflowUpdateFailedError:
        pass
    else:
        raise AssertionError("a null abort must be refused")
    action = OperatorAction(operator="capture", reason="replay capture: abort")
    await handle.execute_update("abort", action, result_type=OperatorActionResult)


async def lock_expired(cap: Capture, branch: Branch) -> None:
    """The lock's watch finds its holder alive, then (terminated mid-wave) gone: it expires."""
    handle = await cap.start(cap.request(branch, "a", targets=["t1"], params={"delay": 4}))
    await cap.until(handle, lambda s: s.phase is Phase.EXECUTING)
    await asyncio.sleep(2.5)  # two or three watches (every 1 s) see the holder alive
    await handle.terminate("capture: the holder is gone")
    assert (await cap.lock_closed(f"{branch.name}.t1")).startswith("expired")


async def approve_after_refusal(cap: Capture, handle: WorkflowHandle[Any, ChangeResult]) -> None:
    """Awaiting approval: an unqualified approval by signal is refused; a qualified update passes."""
    status = await cap.until(handle, lambda s: s.phase is Phase.AWAITING_APPROVAL)
    assert status.report is not None
    approval = Approval(
        guardrails=["fake-state"],
        approver="capture",
        reason="replay capture",
        report_hash=status.report.report_hash,
    )
    await handle.signal("approve_signal", approval)  # the requester: refused, recorded
    await cap.until(handle, lambda s: len(s.rejected_approvals) == 1)
    await handle.execute_update(
        "approve", approval.model_copy(update={"approver": "sre-lead"}), result_type=ApprovalResult
    )


def operator_update(update: str) -> Steer:
    """Send the ``abort`` or ``rollback`` update while the first wave bakes."""

    async def steer(cap: Capture, handle: WorkflowHandle[Any, ChangeResult]) -> None:
        await cap.until(handle, lambda s: s.phase is Phase.BAKING)
        action = OperatorAction(operator="capture", reason=f"replay capture: {update}")
        await handle.execute_update(update, action, result_type=OperatorActionResult)

    return steer


async def abort_when_scheduled(cap: Capture, handle: WorkflowHandle[Any, ChangeResult]) -> None:
    """An operator aborts a change that waits for its not_before."""
    action = OperatorAction(operator="capture", reason="replay capture: not this week")
    await handle.execute_update("abort", action, result_type=OperatorActionResult)


async def resume_when_paused(cap: Capture, handle: WorkflowHandle[Any, ChangeResult]) -> None:
    """The bake pauses and pages (no data from the signal); an operator resumes it."""
    await cap.until(handle, lambda s: s.phase is Phase.PAUSED)
    action = OperatorAction(operator="capture", reason="replay capture: resume")
    await handle.execute_update("resume", action, result_type=OperatorActionResult)


async def approve_once(cap: Capture, handle: WorkflowHandle[Any, ChangeResult]) -> None:
    """Approve the timing failure once: the re-gate before wave 2 is covered by it."""
    status = await cap.until(handle, lambda s: s.phase is Phase.AWAITING_APPROVAL)
    assert status.report is not None
    approval = Approval(
        guardrails=["fake-timing"],
        approver="sre-lead",
        reason="replay capture",
        report_hash=status.report.report_hash,
    )
    await handle.execute_update("approve", approval, result_type=ApprovalResult)


def freeze_rule(rule: str, *spans: tuple[float, float], **params: Any) -> dict[str, Any]:
    """A UTC ``change-window`` rule frozen ``(begins_in, lasts)`` seconds from now (real time)."""
    now = datetime.now(UTC)

    def wall(at: datetime) -> str:
        return at.replace(tzinfo=None).isoformat(timespec="seconds")

    freezes = [f"{wall(now + _s(a))}/{wall(now + _s(a + b))}" for a, b in spans]
    return {
        "id": rule,
        "use": "change-window",
        "params": {"timezone": "UTC", "freeze": freezes, **params},
    }


def timed(
    rules: Callable[[], list[dict[str, Any]]],
    taken: Callable[[ChangeStatus], bool],
    *,
    ready: Callable[[ChangeStatus], bool] | None = None,
    steer: Steer | None = None,
    not_before_in: float | None = None,
) -> Drive:
    """Drive a branch whose rules are laid out from its start (real time).

    ``ready`` is awaited before ``steer``; ``taken`` must hold for the final status: together they
    prove the run went down the branch (a capture too slow for its seconds fails loudly).
    """

    async def drive(cap: Capture, branch: Branch) -> None:
        request = cap.request(replace(branch, rules=rules()))
        if not_before_in is not None:
            at = datetime.now(UTC) + _s(not_before_in)
            request = request.model_copy(update={"not_before": at})
        handle = await cap.start(request)
        if ready is not None:
            await cap.until(handle, ready)
        if steer is not None:
            await steer(cap, handle)
        assert branch.expect is not None
        await cap.expect(handle, branch.expect)
        final = await handle.query("status", result_type=ChangeStatus)
        assert taken(final), f"{branch.name} did not take its branch: {final.message}"

    return drive


def _mid_rollout(choice: str) -> Callable[[], list[dict[str, Any]]]:
    """Wave 1 (4 s bake + 1 s allowance) fits; wave 2 would run into the freeze at +9 s."""
    return lambda: [freeze_rule("release-freeze", (9, 4), wave_allowance="1s", mid_rollout=choice)]


UNREACHABLE_SIGNAL = {
    "name": "probe",
    "source": "prometheus",
    "url": "http://127.0.0.1:9",
    "query": "up",
    "degraded_above": 0.5,
    "critical_above": 0.9,
    "timeout": "1s",
}

APPROVABLE_FAILURE = [
    {
        "use": "fake-state",
        "params": {"outcome": "fail"},
        "opt_out": {"approvers": ["sre-leads"]},
    }
]

BRANCHES: list[Branch] = [
    Branch("proceed", Outcome.COMPLETED, targets=3, waves=["1", "100%"], bake="1s"),
    Branch(
        "block_recheck_proceed",
        Outcome.COMPLETED,
        rules=[{"use": "switch", "opt_out": "forbidden"}],
        steer=recheck_until_fixed,
    ),
    Branch("wait_then_proceed", Outcome.COMPLETED, rules=[{"use": "soon-window"}]),
    Branch("wait_already_due", Outcome.COMPLETED, rules=[{"use": "due-window"}]),
    Branch(
        "wait_past_deadline",
        Outcome.REJECTED,
        rules=[{"use": "fake-timing", "params": {"outcome": "wait"}}],
        deadline_in=60,
    ),
    Branch(
        "blocked_until_deadline",
        Outcome.REJECTED,
        rules=[{"use": "fake-state", "params": {"outcome": "fail"}, "opt_out": "forbidden"}],
        deadline_in=DEADLINE,
    ),
    Branch(
        "awaiting_approval_until_deadline",
        Outcome.REJECTED,
        rules=[
            {
                "use": "fake-state",
                "params": {"outcome": "fail"},
                "opt_out": {"approvers": ["sre-leads"]},
            }
        ],
        deadline_in=DEADLINE,
    ),
    Branch("invalid_kind", Outcome.REJECTED, kind="teleport"),
    Branch("gate_policy_invalid", Outcome.REJECTED, rules=[{"use": "no-such-guardrail"}]),
    Branch(
        "gate_check_errors",
        Outcome.REJECTED,
        rules=[
            {"use": "fake-health", "params": {"outcome": "raise"}},
            {"use": "slow-check", "timeout": "1s"},
            {"use": "always-pass"},
        ],
        deadline_in=DEADLINE,
    ),
    Branch(
        "unanswered_regates",
        Outcome.COMPLETED,
        rules=[{"use": "first-gate-down", "opt_out": "forbidden"}],
    ),
    Branch(
        "apply_failure_rollback",
        Outcome.ROLLED_BACK,
        targets=3,
        max_parallel=1,
        params={"fail_apply": ["apply_failure_rollback.t3"]},
    ),
    Branch(
        "compensation_failure",
        Outcome.FAILED,
        targets=3,
        max_parallel=1,
        params={
            "fail_apply": ["compensation_failure.t3"],
            "fail_revert": ["compensation_failure.t1"],
        },
    ),
    Branch(
        "regate_blocks_mid_rollout",
        Outcome.ROLLED_BACK,
        rules=[{"use": "mid-rollout-freeze", "opt_out": "forbidden"}],
        waves=["1", "100%"],
        deadline_in=DEADLINE,
    ),
    Branch(
        "cancel_while_blocked",
        Outcome.ABORTED,
        rules=[{"use": "fake-state", "params": {"outcome": "fail"}, "opt_out": "forbidden"}],
        steer=cancel_when(lambda s: s.phase is Phase.BLOCKED),
    ),
    Branch(
        "cancel_during_wave",
        Outcome.ABORTED,
        targets=3,
        max_parallel=1,
        params={"delay": 1.0},
        steer=cancel_when(lambda s: s.phase is Phase.EXECUTING and len(s.applied) == 1),
    ),
    Branch(
        "cancel_during_bake",
        Outcome.ABORTED,
        waves=["1", "100%"],
        bake="1h",
        steer=cancel_when(lambda s: s.phase is Phase.BAKING),
    ),
    Branch(
        "lock_conflict_released", Outcome.COMPLETED, rules=lock_rules("30s"), drive=lock_conflict
    ),
    Branch("lock_expired", None, rules=lock_rules("1s"), drive=lock_expired),
    Branch(
        "approval_refused_then_accepted",
        Outcome.COMPLETED,
        rules=APPROVABLE_FAILURE,
        steer=approve_after_refusal,
    ),
    Branch(
        "abort_update_during_bake",
        Outcome.ABORTED,
        waves=["1", "100%"],
        bake="1h",
        steer=operator_update("abort"),
    ),
    Branch(
        "rollback_update_during_bake",
        Outcome.ROLLED_BACK,
        waves=["1", "100%"],
        bake="1h",
        steer=operator_update("rollback"),
    ),
    Branch("large_wave_batches", Outcome.COMPLETED, targets=105, max_parallel=20),
    Branch(
        "bake_pause_resume",
        Outcome.COMPLETED,
        bake="2s",
        policy_extra={
            "signals": [UNREACHABLE_SIGNAL],
            "responses": [
                {
                    "signal": "probe",
                    "state": "insufficient_data",
                    "do": "pause_and_page",
                    "timeout": "1h",
                    "then": "rollback",
                }
            ],
        },
        steer=resume_when_paused,
    ),
    Branch(
        "approval_carries_over",
        Outcome.COMPLETED,
        rules=[
            {
                "use": "fake-timing",
                "params": {"outcome": "fail"},
                "opt_out": {"approvers": ["sre-leads"]},
            }
        ],
        waves=["1", "100%"],
        steer=approve_once,
    ),
    Branch("refused_start", None, drive=refused_start),
    Branch(
        "point_of_no_return",
        Outcome.FAILED,
        targets=3,
        max_parallel=1,
        waves=["1", "100%"],
        params={
            "irreversible": ["point_of_no_return.t1"],
            "fail_apply": ["point_of_no_return.t3"],
        },
        steer=abort_when_paused,
    ),
    Branch("change_id_reused", None, drive=change_id_reused),
    Branch("refused_signals", Outcome.ABORTED, rules=APPROVABLE_FAILURE, steer=refused_signals),
    Branch("signed_approval", None, rules=APPROVABLE_FAILURE, drive=signed_approval),
    Branch(
        "timing_rules_wait_together",
        Outcome.COMPLETED,
        drive=timed(
            lambda: [
                freeze_rule("freeze-a", (0, 2), (3, 1)),
                freeze_rule("freeze-b", (0, 3.5)),
            ],
            lambda s: s.gate_runs == 2,  # one wait, until both are open: the one answer
        ),
    ),
    Branch(
        "wave_waits_for_freeze",
        Outcome.COMPLETED,
        bake="1s",
        drive=timed(
            lambda: [freeze_rule("release-freeze", (4, 4), wave_allowance="6s")],
            lambda s: s.gate_runs == 2,
            ready=lambda s: s.wave_timing is not None,
        ),
    ),
    Branch(
        "mid_rollout_finish",
        Outcome.COMPLETED,
        waves=["1", "100%"],
        bake="4s",
        drive=timed(
            _mid_rollout("finish"), lambda s: any("mid_rollout: finish" in p for p in s.pages)
        ),
    ),
    Branch(
        "mid_rollout_pause_resume",
        Outcome.COMPLETED,
        waves=["1", "100%"],
        bake="4s",
        drive=timed(
            _mid_rollout("pause"),
            lambda s: any("mid_rollout: pause" in p for p in s.pages),
            ready=lambda s: s.phase is Phase.PAUSED,
            steer=resume_when_paused,
        ),
    ),
    Branch(
        "mid_rollout_rollback",
        Outcome.ROLLED_BACK,
        waves=["1", "100%"],
        bake="4s",
        drive=timed(_mid_rollout("rollback"), lambda s: "mid_rollout: rollback" in s.message),
    ),
    Branch(
        "scheduled_not_before",
        Outcome.COMPLETED,
        drive=timed(
            lambda: list(PASS),
            lambda s: s.gate_runs == 1,
            ready=lambda s: s.retry_after is not None and s.gate_runs == 0,
            not_before_in=3,
        ),
    ),
    Branch(
        "scheduled_abort",
        Outcome.ABORTED,
        drive=timed(
            lambda: list(PASS),
            lambda s: s.gate_runs == 0,
            ready=lambda s: s.retry_after is not None,
            steer=abort_when_scheduled,
            not_before_in=3600,
        ),
    ),
    Branch(
        "batch_failure_reverts",
        Outcome.ROLLED_BACK,
        targets=105,
        max_parallel=20,
        params={"fail_apply": ["batch_failure_reverts.t103"]},
    ),
    Branch(
        "point_of_no_return_batch",
        Outcome.FAILED,
        targets=105,
        max_parallel=20,
        params={
            "irreversible": ["point_of_no_return_batch.t2"],
            "fail_apply": ["point_of_no_return_batch.t103"],
        },
        steer=abort_when_paused,
    ),
    Branch("change_events", None, targets=3, waves=["1", "100%"], drive=change_events),
    Branch("wave_window_lanes", Outcome.COMPLETED, targets=250, max_parallel=20),
    Branch(
        "apply_many_rounds",
        Outcome.COMPLETED,
        kind="recording-many",
        targets=150,
        max_parallel=6,
    ),
    Branch(
        "apply_many_batches",
        Outcome.ROLLED_BACK,
        kind="recording-many",
        targets=150,
        max_parallel=4,
        params={"fail_apply": ["apply_many_batches.t140"]},
    ),
    Branch(
        "wave_window_failure_reverts",
        Outcome.ROLLED_BACK,
        targets=250,
        max_parallel=20,
        params={"fail_apply": ["wave_window_failure_reverts.t150"]},
    ),
    Branch("late_stop", None, max_parallel=1, drive=late_stop),
    Branch(
        "rejected_stop",
        None,
        rules=[{"use": "fake-state", "params": {"outcome": "fail"}, "opt_out": "forbidden"}],
        deadline_in=3,
        drive=rejected_stop,
    ),
    Branch("ending_without_locks", Outcome.COMPLETED, targets=3),
    Branch("stop_cancels", None, targets=4, max_parallel=2, drive=stop_cancels),
    Branch("stop_cancels_batches", None, targets=250, max_parallel=4, drive=stop_cancels_batches),
    Branch("wave_apply_many", Outcome.COMPLETED, kind="recording-many", targets=20, max_parallel=5),
    Branch(
        "wave_apply_many_failure",
        Outcome.ROLLED_BACK,
        kind="recording-many",
        targets=20,
        max_parallel=5,
        params={"fail_apply": ["wave_apply_many_failure.t6"]},
    ),
    Branch(
        "stop_cancels_chunks",
        None,
        kind="recording-many",
        targets=4,
        max_parallel=2,
        drive=stop_cancels_chunks,
    ),
]
"""Every branch that exists in the workflow code today (one real run each)."""


# ------------------------------------------------------------------ driving


@dataclass
class Capture:
    """The client and task queue branches run on, and the helpers they share.

    Attributes:
        client: a client of the capture's dev server.
        state: the worker's own files (audit store, operator directory) for this capture.
        task_queue: the worker's task queue.
    """

    client: Client
    state: Path
    task_queue: str = TASK_QUEUE

    def request(
        self,
        branch: Branch,
        suffix: str = "a",
        *,
        targets: list[str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> ChangeRequest:
        """The change a branch runs (ids prefixed with the branch name)."""
        names = targets or [f"t{i}" for i in range(1, branch.targets + 1)]
        deadline = (
            datetime.now(UTC) + _s(branch.deadline_in) if branch.deadline_in is not None else None
        )
        return ChangeRequest.model_validate(
            {
                "change_id": f"{branch.name}.{suffix}",
                "kind": branch.kind,
                "summary": f"replay capture: {branch.name}",
                "requester": "capture",
                "team": "replay",
                "environment": "prod",
                "targets": [{"id": f"{branch.name}.{n}"} for n in names],
                "params": branch.params if params is None else params,
                "rollout": {
                    "waves": branch.waves,
                    "max_parallel": branch.max_parallel,
                    "bake": branch.bake,
                },
                "policy": {"guardrails": branch.rules, **branch.policy_extra},
                "deadline": deadline,
            }
        )

    async def start(self, request: ChangeRequest) -> WorkflowHandle[Any, ChangeResult]:
        """Start a change."""
        return await self.client.start_workflow(
            "GuardedChange",
            request,
            id=request.change_id,
            task_queue=self.task_queue,
            result_type=ChangeResult,
        )

    async def until(
        self, handle: WorkflowHandle[Any, Any], ready: Callable[[ChangeStatus], bool]
    ) -> ChangeStatus:
        """Poll the ``status`` query until ``ready``."""
        end = time.monotonic() + PHASE_TIMEOUT
        while True:
            status: ChangeStatus = await handle.query("status", result_type=ChangeStatus)
            if ready(status):
                return status
            if time.monotonic() > end:
                raise AssertionError(f"{handle.id} stuck in {status.phase}: {status.message}")
            await asyncio.sleep(0.05)

    async def expect(self, handle: WorkflowHandle[Any, ChangeResult], outcome: Outcome) -> None:
        """Wait for the change to end and check its outcome (a cancelled one reports aborted)."""
        try:
            got = (await handle.result()).outcome
        except WorkflowFailureError:
            status = await handle.query("status", result_type=ChangeStatus)
            got = status.outcome
        if got is not outcome:
            raise AssertionError(f"{handle.id} ended {got}, expected {outcome}")

    async def lock_closed(self, target: str) -> str:
        """Wait for a target's current lock to end; returns how it ended."""
        handle = self.client.get_workflow_handle(lock_id(target))
        end = time.monotonic() + PHASE_TIMEOUT
        while (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
            if time.monotonic() > end:
                raise AssertionError(f"the lock of {target} is still held")
            await asyncio.sleep(0.1)
        return str(await handle.result())


async def run_branch(cap: Capture, branch: Branch) -> None:
    """Drive one branch to its end."""
    if branch.drive is not None:
        await branch.drive(cap, branch)
        return
    handle = await cap.start(cap.request(branch))
    if branch.steer is not None:
        await branch.steer(cap, handle)
    assert branch.expect is not None, f"{branch.name}: a default drive needs an outcome"
    await cap.expect(handle, branch.expect)


def _query(branch: str) -> str:
    return f"WorkflowId STARTS_WITH '{branch}.' OR WorkflowId STARTS_WITH 'lock/{branch}.'"


async def export_branch(client: Client, branch: str, out: Path) -> list[Path]:
    """Write every run the branch made, once all of them have closed."""
    end = time.monotonic() + PHASE_TIMEOUT
    running = f"({_query(branch)}) AND ExecutionStatus = 'Running'"
    while (await client.count_workflows(running)).count:
        if time.monotonic() > end:
            raise AssertionError(f"{branch}: workflows still running")
        await asyncio.sleep(0.1)
    runs = [w async for w in client.list_workflows(_query(branch))]
    runs.sort(key=lambda w: (w.start_time, w.id))
    counts: dict[str, int] = defaultdict(int)
    written = []
    for run in runs:
        counts[run.workflow_type] += 1
        history = await client.get_workflow_handle(run.id, run_id=run.run_id).fetch_history()
        path = out / f"{branch}__{run.workflow_type}__{counts[run.workflow_type]}.json"
        path.write_text(history.to_json() + "\n")
        written.append(path)
    return written


def _replace(out: Path, files: list[Path], branches: list[str]) -> None:
    """Move the new files in; drop the old ones of these branches (of all, on a full capture)."""
    out.mkdir(parents=True, exist_ok=True)
    everything = set(branches) == {b.name for b in BRANCHES}
    for old in out.glob("*.json"):
        if everything or old.name.split("__", 1)[0] in branches:
            old.unlink()
    for f in files:
        shutil.move(f, out / f.name)


async def _capture(state: Path, out: Path, branches: list[Branch], *, verbose: bool) -> bool:
    """Run the branches on a fresh dev server with ``state`` as the worker's own files."""
    # The worker's stores (audit, operator directory) live in ``state``, never in the checkout.
    (state / "operators.yaml").write_text(OPERATORS)
    settings = Settings.from_env(
        env={
            "CHANGEGUARD_AUDIT_URL": f"sqlite:///{state / 'audit.db'}",
            "CHANGEGUARD_DIRECTORY": f"yaml:{state / 'operators.yaml'}",
        },
        task_queue=TASK_QUEUE,
    )
    env = await WorkflowEnvironment.start_local(
        dev_server_startup_timeout=STARTUP_TIMEOUT,
        data_converter=data_converter,
        plugins=client_plugins(),
        dev_server_existing_path=temporal_binary("temporal"),
        search_attributes=list(sa.ALL),
        dev_server_log_level="error",
        ui=False,
        # Branches fail activities on purpose; their warnings are noise unless asked for.
        runtime=None if verbose else _quiet_runtime(),
    )
    try:
        cap = Capture(env.client, state)
        worker = build_worker(
            env.client,
            settings,
            guardrails=guardrails(),
            kinds=fakes.kinds(many=True),
            bundle=OPEN_BUNDLE,  # branches bring their rules as request additions
        )
        async with worker:
            outcomes = await asyncio.gather(
                *(run_branch(cap, b) for b in branches), return_exceptions=True
            )
            failed = [(b.name, e) for b, e in zip(branches, outcomes, strict=True) if e]
            for name, exc in failed:
                print(f"branch {name} did not behave: {exc!r}", file=sys.stderr)
            if failed:
                return False
            exported = state / "histories"
            exported.mkdir()
            files = []
            for b in branches:
                files += await export_branch(env.client, b.name, exported)
            _replace(out, files, [b.name for b in branches])
            return True
    finally:
        await env.shutdown()


async def capture(out: Path, branches: list[Branch], *, verbose: bool = False) -> int:
    """Run every branch on a fresh dev server and replace ``out``'s histories; 0 on success."""
    names = [b.name for b in branches]
    bad = [n for n in names if not re.fullmatch(r"[a-z0-9_]+", n)]
    assert not bad and len(set(names)) == len(names), (
        f"branch names must be unique snake_case: {bad}"
    )
    RecordingKind.ledger = Ledger()
    Switch.outcome = "fail"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="changeguard-capture-") as tmp:
        if not await _capture(Path(tmp), out, branches, verbose=verbose):
            return 1
    took = time.monotonic() - started
    report = await replay_files([out])
    files = [f for f in history_files([out]) if f.name.split("__", 1)[0] in names]
    print(
        f"captured {len(files)} histories of {len(branches)} branches into {out} in {took:.1f}s; "
        f"replayed in {report.seconds:.2f}s: {'ok' if report.ok else 'FAILED'}"
    )
    for r in report.failed:
        print(f"  FAIL {r.source}: {r.mismatch or r.error}", file=sys.stderr)
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and capture."""
    p = argparse.ArgumentParser(prog="python -m tests.replay.capture", description=__doc__)
    p.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    p.add_argument("--only", action="append", help="capture only this branch (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", help="show worker and SDK warnings")
    args = p.parse_args(argv)
    from worker.logging import configure

    configure("console", logging.WARNING if args.verbose else logging.ERROR)
    unknown = set(args.only or []) - {b.name for b in BRANCHES}
    if unknown:
        p.error(f"unknown branch(es): {', '.join(sorted(unknown))}")
    branches = [b for b in BRANCHES if not args.only or b.name in args.only]
    return asyncio.run(capture(args.out, branches, verbose=args.verbose))


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter finalisation, where the SDK's runtime can crash
