"""The ``fleet-drain`` change kind: drain a host through the fleet's asynchronous drain job.

The worked example of a hand-off (``activities.kinds.handoff``): ``apply`` posts
``/hosts/{id}/drain`` with the step's idempotency key and the attempt's signed callback URL, then
completes asynchronously; the fleet's job reports progress and its end to the worker's callback
endpoint, which heartbeats and completes the activity. No worker thread waits for the drain.

A retried attempt (the callback was lost and the heartbeat timeout fired, or the worker died)
posts again with the same key: the fleet runs nothing new. A job that already finished is reported
at once (``replayed``); a running one reports to the new attempt's URL from then on.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field
from temporalio.exceptions import ApplicationError

from activities.kinds.base import ChangeKind
from activities.kinds.progress import Progress
from activities.resilience import retryable_error
from workflows.errors import TARGET_REJECTED, TARGET_UNAVAILABLE
from workflows.models import ApplyResult, Target, TargetState
from workflows.progress_models import MutationOptions
from workflows.types import Duration


class FleetDrainParams(BaseModel):
    """Parameters of a ``fleet-drain`` change."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="the fleet API")
    duration_ms: int = Field(default=2000, ge=0, le=3_600_000, description="how long a drain takes")
    progress_every_ms: int = Field(default=500, ge=10, le=600_000)
    heartbeat_interval: Duration = Field(default=timedelta(seconds=2))
    timeout: Duration = Field(default=timedelta(hours=1))


class FleetDrain(ChangeKind[FleetDrainParams]):
    """Drain one host through an external job that calls back."""

    name: ClassVar[str] = "fleet-drain"
    params_model: ClassVar[type[BaseModel]] = FleetDrainParams
    reversible: ClassVar[bool] = True
    description: ClassVar[str] = "POST /hosts/{id}/drain, completed by the job's callback"

    def options(self, params: FleetDrainParams) -> MutationOptions:
        """Beats come from the job's progress reports, every ``heartbeat_interval`` or sooner."""
        return MutationOptions(
            start_to_close=params.timeout,
            heartbeat_interval=params.heartbeat_interval,
            stall_after=params.heartbeat_interval * 10,
        )

    async def apply(
        self,
        params: FleetDrainParams,
        target: Target,
        *,
        idempotency_key: str,
        progress: Progress[Any] | None = None,
    ) -> ApplyResult:
        """Start (or find) the drain job of this key; hand the attempt off to its callback."""
        if progress is None or progress.request is None:
            raise ApplicationError(
                "fleet-drain hands its work off and must run inside apply_change",
                type=TARGET_REJECTED,
                non_retryable=True,
            )
        body = {
            "duration_ms": params.duration_ms,
            "progress_every_ms": params.progress_every_ms,
            "callback_url": progress.callback_url(),
        }
        job = await _post(params, f"/hosts/{target.id}/drain", idempotency_key, body, target)
        if job.get("state") == "done":
            return ApplyResult(
                target_id=target.id,
                applied=False,
                replayed=True,
                detail=f"already drained by an earlier attempt ({idempotency_key}); nothing sent",
                before={"drained": False},
                after={"drained": True},
            )
        progress.hand_off()

    async def revert_if_applied(
        self,
        params: FleetDrainParams,
        target: Target,
        *,
        applied_key: str,
        idempotency_key: str,
    ) -> ApplyResult:
        """End the drain if ``applied_key`` started one (synchronous)."""
        async with httpx.AsyncClient(base_url=params.base_url, trust_env=False, timeout=10) as c:
            try:
                jobs = (await c.get("/drains", params={"key": applied_key})).json()
            except (httpx.HTTPError, ValueError) as exc:
                raise retryable_error(f"{target.id}: {exc}", type=TARGET_UNAVAILABLE) from exc
        if not jobs:
            return ApplyResult(
                target_id=target.id, applied=False, detail=f"nothing to revert: {applied_key}"
            )
        answer = await _post(params, f"/hosts/{target.id}/undrain", idempotency_key, {}, target)
        return ApplyResult(
            target_id=target.id,
            applied=True,
            detail=f"undrained {target.id}",
            before={"drained": True},
            after={"drained": False, **({"was": answer.get("undrained")} if answer else {})},
        )

    async def describe(self, params: FleetDrainParams, target: Target) -> TargetState:
        """The host as the fleet shows it."""
        async with httpx.AsyncClient(base_url=params.base_url, trust_env=False, timeout=10) as c:
            try:
                response = await c.get(f"/hosts/{target.id}")
                host = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                return TargetState(
                    target_id=target.id, reachable=False, healthy=False, detail={"error": str(exc)}
                )
        return TargetState(
            target_id=target.id,
            reachable=response.is_success,
            healthy=bool(host.get("healthy", False)),
            version=host.get("version"),
        )


async def _post(
    params: FleetDrainParams, path: str, key: str, body: dict[str, Any], target: Target
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=params.base_url, trust_env=False, timeout=10) as c:
        try:
            response = await c.post(path, json=body, headers={"Idempotency-Key": key})
        except httpx.HTTPError as exc:
            raise retryable_error(
                f"POST {path} failed: {type(exc).__name__}", type=TARGET_UNAVAILABLE
            ) from exc
    if response.status_code >= 500:
        raise retryable_error(
            f"POST {path} answered {response.status_code}", type=TARGET_UNAVAILABLE
        )
    if not response.is_success:
        raise ApplicationError(
            f"POST {path} for {target.id} answered {response.status_code}: {response.text[:300]}",
            type=TARGET_REJECTED,
            non_retryable=True,
        )
    answer: dict[str, Any] = response.json()
    return answer
