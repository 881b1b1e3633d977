"""The change's rollout policy and its team's pager (deterministic workflow code).

The rollout policy (signals, responses, pager, ``page_on_reject``) is resolved from the bundle the
worker holds when it is first needed, and again for each wave's bake (:meth:`Pager.refresh`), so a
new bundle mid-rollout is heeded. A page that fails is recorded in the status, never fatal.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    from workflows.change_run import ChangeRun
    from workflows.models import ChangeContext, ResolvePolicyInput
    from workflows.rollout_models import PageInput, RolloutPolicy
    from workflows.summaries import line
    from workflows.unwind import failure_of


class Pager:
    """Resolve the rollout policy once (until refreshed) and page the change's team through it."""

    def __init__(self, change: ChangeRun) -> None:
        self._change = change
        self._rollout: RolloutPolicy | None = None
        self._pages_sent = 0

    def refresh(self) -> None:
        """Resolve the policy again when next needed (each wave's bake answers by the bundle now)."""
        self._rollout = None

    async def policy(self) -> RolloutPolicy:
        """The rollout policy, resolved by ``resolve_rollout`` when not yet known."""
        if self._rollout is None:
            request = self._change.request
            self._rollout = await calls.resolve_rollout(
                ResolvePolicyInput(
                    change=ChangeContext.of(request, self._change.change_id),
                    policy=request.policy,
                )
            )
        return self._rollout

    async def page(self, summary: str, *, within: timedelta = timedelta(minutes=5)) -> None:
        """Page the change's team through the policy's pager; a failed page is recorded, not fatal."""
        rollout = await self.policy()
        change, request, status = self._change, self._change.request, self._change.status
        page = PageInput(
            pager=rollout.pager,
            change_id=change.change_id,
            owner=request.team,
            severity="critical",
            summary=summary,
            details={"requester": request.requester, "applied": len(status.applied)},
            dedup_key=f"{change.change_id}:page:{self._pages_sent}",
        )
        try:
            await calls.page(
                page, within=within, summary=line(f"page {request.team} via {rollout.pager}")
            )
            status.pages.append(f"{rollout.pager}: {summary}")
        except ActivityError as exc:
            message, _ = failure_of(exc)
            status.pages.append(f"{rollout.pager} FAILED ({message}): {summary}")
        self._pages_sent += 1
        del status.pages[:-50]  # the status stays small (I10)
