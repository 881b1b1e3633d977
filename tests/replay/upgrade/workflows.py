"""The worked upgrade of docs/versioning.md, one class per step, around the wave plan's ledger record.

``workflows/guarded_change.py`` is at step 1: the new ``plan`` record is written behind
``workflow.patched(PLAN_PATCH)``. These subclasses stand for the steps before and after it, so the
tests can prove each transition on real histories:

- :class:`BeforePlanGuardedChange` (step 0) is the code before the change: no plan record.
- :class:`DeprecatedPlanGuardedChange` (step 2) is the code once every change started before step 1
  has finished: ``workflow.deprecate_patch`` and the new step unconditionally.

Step 3 (deleting the ``deprecate_patch`` line) needs no class: it replays step-2 histories, whose
markers are deprecated, and no longer replays step-1 ones.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.guarded_change import PLAN_PATCH, GuardedChangeWorkflow
    from workflows.models import AuditAction, ChangeResult


@workflow.defn(name="GuardedChange", failure_exception_types=[ValidationError])
class BeforePlanGuardedChange(GuardedChangeWorkflow):
    """Step 0: the code before the plan record existed."""

    @workflow.run
    async def run(self, *args: Any) -> ChangeResult:
        """The real main line."""
        return await super().run(*args)

    async def _record_plan(self, plan: list[list[str]]) -> None:
        return


@workflow.defn(name="GuardedChange", failure_exception_types=[ValidationError])
class DeprecatedPlanGuardedChange(GuardedChangeWorkflow):
    """Step 2: the patch deprecated, the plan record written by every run."""

    @workflow.run
    async def run(self, *args: Any) -> ChangeResult:
        """The real main line."""
        return await super().run(*args)

    async def _record_plan(self, plan: list[list[str]]) -> None:
        workflow.deprecate_patch(PLAN_PATCH)
        await self._audit(AuditAction.PLAN, "changeguard", reason=f"{len(plan)} wave(s)")
