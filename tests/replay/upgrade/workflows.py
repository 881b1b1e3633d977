"""The worked upgrade of docs/versioning.md, one class per step, around the wave plan's ledger record.

``workflows/rollout.py`` is at step 1: the new ``plan`` record is written behind
``workflow.patched(PLAN_PATCH)``. These subclasses stand for the steps before and after it, so the
tests can prove each transition on real histories:

- :class:`BeforePlanGuardedChange` (step 0) is the code before the change: no plan record.
- :class:`DeprecatedPlanGuardedChange` (step 2) is the code once every change started before step 1
  has finished: ``workflow.deprecate_patch`` and the new step unconditionally.

Step 3 (deleting the ``deprecate_patch`` line) needs no class: it replays step-2 histories, whose
markers are deprecated, and no longer replays step-1 ones.

Each workflow is the real one with its rollout (:class:`~workflows.rollout.RolloutRunner`) swapped
for a subclass that writes the plan record as that step does.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.guarded_change import GuardedChangeWorkflow
    from workflows.models import AuditAction, ChangeResult
    from workflows.rollout import PLAN_PATCH, RolloutRunner


class _BeforePlanRollout(RolloutRunner):
    async def record_plan(self, plan: list[list[str]]) -> None:
        return


class _DeprecatedPlanRollout(RolloutRunner):
    async def record_plan(self, plan: list[list[str]]) -> None:
        workflow.deprecate_patch(PLAN_PATCH)
        await self._change.audit(AuditAction.PLAN, "changeguard", reason=f"{len(plan)} wave(s)")


def _with_rollout(wf: GuardedChangeWorkflow, runner: type[RolloutRunner]) -> None:
    """Give the workflow a rollout of class ``runner`` built from the same parts."""
    wf._rollout = runner(wf._change, wf._gate, wf._timing, wf._waves, wf._bake, wf._events)


@workflow.defn(name="GuardedChange", failure_exception_types=[ValidationError])
class BeforePlanGuardedChange(GuardedChangeWorkflow):
    """Step 0: the code before the plan record existed."""

    @workflow.init
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        _with_rollout(self, _BeforePlanRollout)

    @workflow.run
    async def run(self, *args: Any) -> ChangeResult:
        """The real main line."""
        return await super().run(*args)


@workflow.defn(name="GuardedChange", failure_exception_types=[ValidationError])
class DeprecatedPlanGuardedChange(GuardedChangeWorkflow):
    """Step 2: the patch deprecated, the plan record written by every run."""

    @workflow.init
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        _with_rollout(self, _DeprecatedPlanRollout)

    @workflow.run
    async def run(self, *args: Any) -> ChangeResult:
        """The real main line."""
        return await super().run(*args)
