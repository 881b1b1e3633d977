"""GuardedChange with one deliberately non-deterministic edit, and the same edit done safely.

``BrokenGuardedChangeWorkflow`` adds a step (an extra ``describe_target`` activity for the first
target, before validation) without ``workflow.patched``: every recorded ``GuardedChange`` history
must fail to replay against it, which proves the replay harness is live.
``PatchedGuardedChangeWorkflow`` makes the same edit behind ``workflow.patched`` (the recipe in
``docs/versioning.md``) and must replay them all.

Both subclass the real workflow and override one hook, so they follow every other change made to
``workflows/guarded_change.py`` and fail (or pass) for this one reason only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.change import ChangeActivities
    from workflows.guarded_change import GuardedChangeWorkflow
    from workflows.models import ChangeRequest, ChangeResult, DescribeInput

PATCH_ID = "describe-before-validate"


async def _describe_first_target(request: ChangeRequest) -> None:
    await workflow.execute_activity_method(
        ChangeActivities.describe_target,
        DescribeInput(kind=request.kind, target=request.targets[0], params=request.params),
        start_to_close_timeout=timedelta(seconds=30),
    )


@workflow.defn(name="GuardedChange", failure_exception_types=[ValidationError])
class BrokenGuardedChangeWorkflow(GuardedChangeWorkflow):
    """GuardedChange plus an unpatched new first step: not replay-compatible."""

    @workflow.run
    async def run(self, *args: Any) -> ChangeResult:
        """The real main line."""
        return await super().run(*args)

    async def _validate(self, request: ChangeRequest) -> list[str]:
        await _describe_first_target(request)
        return await super()._validate(request)


@workflow.defn(name="GuardedChange", failure_exception_types=[ValidationError])
class PatchedGuardedChangeWorkflow(GuardedChangeWorkflow):
    """The same new step behind ``workflow.patched``: old histories replay without it."""

    @workflow.run
    async def run(self, *args: Any) -> ChangeResult:
        """The real main line."""
        return await super().run(*args)

    async def _validate(self, request: ChangeRequest) -> list[str]:
        if workflow.patched(PATCH_ID):
            await _describe_first_target(request)
        return await super()._validate(request)
