"""The parent's use of irreversible steps reported by ``TargetBatch`` children, without its patch.

``upgrade/before_batch_irreversible/`` holds a ``GuardedChange`` history recorded by a build whose
batches already reported their irreversible steps but whose parent ignored them (a rolling upgrade:
new batch code, old parent code): it unwound the batches. :class:`UnpatchedBatchGuardedChange`
acts on the report without ``workflow.patched`` and cannot replay that history; today's code can.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.compensation import PointOfNoReturn
    from workflows.guarded_change import GuardedChangeWorkflow
    from workflows.models import BatchResult, ChangeResult


class _UnpatchedPointOfNoReturn(PointOfNoReturn):
    def note_batch(self, batch: BatchResult, *, failed: bool = False) -> None:
        self.irreversible.update(batch.irreversible)


@workflow.defn(name="GuardedChange", failure_exception_types=[ValidationError])
class UnpatchedBatchGuardedChange(GuardedChangeWorkflow):
    """The batch report used unconditionally: what the patch protects old histories from."""

    @workflow.init
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # The same tracker (the wave applier and the compensation hold it), unpatched.
        self._past.__class__ = _UnpatchedPointOfNoReturn

    @workflow.run
    async def run(self, *args: Any) -> ChangeResult:
        """The real main line."""
        return await super().run(*args)
