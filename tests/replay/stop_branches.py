"""Capture branches of operator stops at the edges of a rollout (kept beside ``capture.py``).

- ``late_stop``: a rollback still being audited when the last wave ends. The branch runs on a
  worker of its own (its own task queue) whose audit store holds the operator's ``rollback``
  record until the last target is applied, so the change settles
  (``patched("late-stop-honoured")``) with the handler in flight and then unwinds: the race
  ``bench/concurrent_changes.py`` found, made certain.
- ``rejected_stop``: an abort still being audited when the gate loop gives up at the deadline
  (its ``deadline`` record held, then the operator's ``abort`` record): behind
  ``patched("rejected-stop-honoured")`` the change waits for the handler and ends ``aborted``.
- ``stop_cancels``: a rollback while two mutations hang; behind
  ``patched("stop-cancels-mutations")`` they are cancelled and the change unwinds at once.
- ``stop_cancels_batches``: an abort while a large wave's three ``TargetBatch`` children each
  hang in a mutation; behind ``patched("stop-cancels-batches")`` the parent cancels them, each
  fails ``BatchStopped`` with what it applied (``patched("batch-reports-stop")``), and the revert
  batches undo the three targets applied.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from activities.audit import AuditActivities
from tests import fakes
from tests.fakes import HoldingAuditStore, RecordingKind
from tests.helpers import OPEN_BUNDLE
from worker.main import build_worker
from worker.settings import Settings
from workflows.models import AuditAction, ChangeResult, OperatorAction, Outcome

if TYPE_CHECKING:
    from tests.replay.capture import Branch, Capture


def _holding_worker(cap: Capture, branch: Branch, store: HoldingAuditStore) -> Any:
    """A worker of the branch's own (own task queue) whose audit store is ``store``."""
    from tests.replay.capture import guardrails  # capture.py imports this module

    directory = f"yaml:{cap.state / 'operators.yaml'}"
    return build_worker(
        cap.client,
        Settings.from_env(env={"CHANGEGUARD_DIRECTORY": directory}, task_queue=_queue(cap, branch)),
        guardrails=guardrails(),
        kinds=fakes.kinds(many=True),
        bundle=OPEN_BUNDLE,
        audit=AuditActivities(store, directory),
    )


def _queue(cap: Capture, branch: Branch) -> str:
    return f"{cap.task_queue}-{branch.name}"


async def late_stop(cap: Capture, branch: Branch) -> None:
    """t1 applied, a rollback accepted and held in its audit, t2 applied, the rollback lands."""
    last = f"{branch.name}.t2"
    req = cap.request(branch, params={"hold": branch.name, "hold_only": [last]})
    cid = req.change_id or ""
    store = HoldingAuditStore(str(cap.state / f"{branch.name}-audit.db"))
    store.hold(cid, AuditAction.ROLLBACK)
    async with _holding_worker(cap, branch, store):
        handle = await cap.client.start_workflow(
            "GuardedChange", req, id=cid, task_queue=_queue(cap, branch), result_type=ChangeResult
        )
        await cap.until(handle, lambda s: s.applied == [f"{branch.name}.t1"])
        stop = asyncio.create_task(
            handle.execute_update(
                "rollback", OperatorAction(operator="capture", reason="late stop"), result_type=None
            )
        )
        await store.arrived(cid, AuditAction.ROLLBACK)
        RecordingKind.ledger.gate(branch.name).set()
        await cap.until(handle, lambda s: s.message.startswith("the rollout is over"))
        store.let_in(cid, AuditAction.ROLLBACK)
        await stop
        await cap.expect(handle, Outcome.ROLLED_BACK)


async def rejected_stop(cap: Capture, branch: Branch) -> None:
    """Blocked until the deadline; an abort accepted while the deadline is recorded lands."""
    req = cap.request(branch)
    cid = req.change_id or ""
    store = HoldingAuditStore(str(cap.state / f"{branch.name}-audit.db"))
    store.hold(cid, AuditAction.DEADLINE)
    store.hold(cid, AuditAction.ABORT)
    async with _holding_worker(cap, branch, store):
        handle = await cap.client.start_workflow(
            "GuardedChange", req, id=cid, task_queue=_queue(cap, branch), result_type=ChangeResult
        )
        await store.arrived(cid, AuditAction.DEADLINE, within=60)
        stop = asyncio.create_task(
            handle.execute_update(
                "abort", OperatorAction(operator="capture", reason="too late"), result_type=None
            )
        )
        await store.arrived(cid, AuditAction.ABORT)
        store.let_in(cid, AuditAction.DEADLINE)
        await cap.until(handle, lambda s: "is being recorded" in s.message)
        store.let_in(cid, AuditAction.ABORT)
        await stop
        await cap.expect(handle, Outcome.ABORTED)


async def stop_cancels(cap: Capture, branch: Branch) -> None:
    """t1 applied, t2 and t3 hang in their mutations, a rollback cancels them and unwinds."""
    hung = [f"{branch.name}.t2", f"{branch.name}.t3"]
    req = cap.request(branch, params={"hold": branch.name, "hold_only": hung})
    handle = await cap.start(req)
    try:
        await cap.until(handle, lambda s: s.applied == [f"{branch.name}.t1"])
        await handle.execute_update(
            "rollback", OperatorAction(operator="capture", reason="stop"), result_type=None
        )
        await asyncio.wait_for(cap.expect(handle, Outcome.ROLLED_BACK), timeout=60)
    finally:
        RecordingKind.ledger.gate(branch.name).set()


async def stop_cancels_chunks(cap: Capture, branch: Branch) -> None:
    """Two chunks of a small wave (t1-t2, t3-t4): t1 and t3 apply, t2 and t4 hang; a rollback."""
    hung = [f"{branch.name}.t2", f"{branch.name}.t4"]
    req = cap.request(branch, params={"hold": branch.name, "hold_only": hung})
    handle = await cap.start(req)
    try:
        applied = {f"{branch.name}.t1", f"{branch.name}.t3"}
        for _ in range(600):  # the chunks report only when they end: watch the kind
            if applied <= set(RecordingKind.ledger.applied):
                break
            await asyncio.sleep(0.05)
        await handle.execute_update(
            "rollback", OperatorAction(operator="capture", reason="stop"), result_type=None
        )
        await asyncio.wait_for(cap.expect(handle, Outcome.ROLLED_BACK), timeout=60)
    finally:
        RecordingKind.ledger.gate(branch.name).set()


async def stop_cancels_batches(cap: Capture, branch: Branch) -> None:
    """250 targets in three batches; the first of each applies, the rest hang; an abort."""
    ids = [f"{branch.name}.t{i}" for i in range(1, branch.targets + 1)]
    firsts = [ids[0], ids[100], ids[200]]
    req = cap.request(branch, params={"hold": branch.name, "hold_except": firsts})
    handle = await cap.start(req)
    try:
        for _ in range(600):
            if set(firsts) <= set(RecordingKind.ledger.applied):
                break
            await asyncio.sleep(0.05)
        await handle.execute_update(
            "abort", OperatorAction(operator="capture", reason="stop"), result_type=None
        )
        await asyncio.wait_for(cap.expect(handle, Outcome.ABORTED), timeout=60)
    finally:
        RecordingKind.ledger.gate(branch.name).set()
