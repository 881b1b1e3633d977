"""Typed activity calls for workflow code: one helper per activity, owning its timeouts and retries.

Workflow modules call activities only through these helpers, by the name constants of
:mod:`workflows.names` with ``result_type=``, so no workflow module imports an activity class (and
with it httpx, yaml, structlog or a guardrail). ``tests/unit/workflows/test_calls.py`` checks that the worker
registers every name used here. Changing an option here changes no command a workflow emits (the
activity type and its arguments stay), so committed histories keep replaying (docs/versioning.md).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    import workflows.errors as errors
    import workflows.names as names
    import workflows.priorities as priorities
    from workflows.apply_many_models import ApplyManyInput, ApplyManyResult
    from workflows.event_models import ChangeEvent, SendChangeEventResult
    from workflows.identity_models import VerifyInput, VerifyResult
    from workflows.models import (
        ApplyInput,
        ApplyResult,
        AuditRecord,
        CheckResult,
        ClaimChangeInput,
        ClaimChangeResult,
        Directory,
        HolderAliveInput,
        LoadDirectoryInput,
        ReleaseLocksInput,
        ResolvedPolicy,
        ResolvePolicyInput,
        RunCheckInput,
        ValidateChangeInput,
        ValidateChangeResult,
    )
    from workflows.rollout_models import (
        ObserveInput,
        ObserveResult,
        PageInput,
        PageResult,
        RolloutPolicy,
    )
    from workflows.timing_models import WaveTimingInput, WaveTimingResult

R = TypeVar("R")


async def _call(name: str, arg: Any, *, result_type: type[R], **options: Any) -> R:
    """Run the activity ``name`` and decode its result as ``result_type``."""
    result: R = await workflow.execute_activity(name, arg, result_type=result_type, **options)
    return result


# --------------------------------------------------------------------------------- ledger

AUDIT_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=20,
)
CLAIM_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=6,
    non_retryable_error_types=list(errors.NON_RETRYABLE),
)
"""A change that cannot claim its id within about half a minute is refused, not left waiting."""


async def record_audit(record: AuditRecord, *, summary: str) -> bool:
    """Write one ledger record (idempotent by its id)."""
    return await _call(
        names.RECORD_AUDIT,
        record,
        result_type=bool,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=AUDIT_RETRY,
        summary=summary,
    )


async def claim_change(inp: ClaimChangeInput) -> ClaimChangeResult:
    """Claim the change id for this run chain in the ledger."""
    return await _call(
        names.CLAIM_CHANGE,
        inp,
        result_type=ClaimChangeResult,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=CLAIM_RETRY,
        summary="claim the change id in the ledger",
    )


async def load_directory(inp: LoadDirectoryInput) -> Directory:
    """The operator directory, for checking approvers."""
    return await _call(
        names.LOAD_DIRECTORY,
        inp,
        result_type=Directory,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=AUDIT_RETRY,
        summary="load the operator directory",
    )


VERIFY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=[errors.INVALID_INPUT],
)
"""A JWKS or directory that cannot be read is retried; an invalid directory is not."""


async def verify_signature(inp: VerifyInput, *, summary: str) -> VerifyResult:
    """Who signed a payload, against the operator directory as it is now (a refusal is a result)."""
    return await _call(
        names.VERIFY_SIGNATURE,
        inp,
        result_type=VerifyResult,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=VERIFY_RETRY,
        summary=summary,
    )


# --------------------------------------------------------------------------------- gate

RESOLVE_TIMEOUT = timedelta(seconds=30)
CHECK_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_attempts=2,
    non_retryable_error_types=list(errors.NON_RETRYABLE),
)
POLICY_RETRY = RetryPolicy(maximum_attempts=3, non_retryable_error_types=list(errors.NON_RETRYABLE))
"""``resolve_rollout`` and ``check_wave_timing``: three tries, business errors not retried."""


async def resolve_policy(inp: ResolvePolicyInput) -> ResolvedPolicy:
    """The effective policy of a gate: the platform bundle plus the request's additions."""
    return await _call(
        names.RESOLVE_POLICY,
        inp,
        result_type=ResolvedPolicy,
        start_to_close_timeout=RESOLVE_TIMEOUT,
        retry_policy=CHECK_RETRY,
        summary="resolve the effective policy",
        priority=priorities.GATE,
    )


async def run_check(
    inp: RunCheckInput,
    *,
    activity_id: str,
    check_timeout: timedelta,
    summary: str,
    local: bool = False,
) -> CheckResult:
    """Run one guardrail check; ``check_timeout`` is the check's own, doubled for all attempts.

    ``local`` runs it as a local activity in this worker (the gate decides: every check of the
    gate is ``dispatch: local``): no task-queue round trip and no priority, a marker in the
    history instead of three activity events (docs/policy.md, "How a check runs").
    """
    options: dict[str, Any] = {
        "activity_id": activity_id,
        "start_to_close_timeout": check_timeout,
        "schedule_to_close_timeout": check_timeout * 2,
        "retry_policy": CHECK_RETRY,
        "summary": summary,
    }
    if local:
        result: CheckResult = await workflow.execute_local_activity(
            names.RUN_CHECK, inp, result_type=CheckResult, **options
        )
        return result
    return await _call(
        names.RUN_CHECK, inp, result_type=CheckResult, priority=priorities.GATE, **options
    )


# --------------------------------------------------------------------------------- rollout


async def resolve_rollout(inp: ResolvePolicyInput) -> RolloutPolicy:
    """The rollout policy (signals, responses, pager) a change bakes with."""
    return await _call(
        names.RESOLVE_ROLLOUT,
        inp,
        result_type=RolloutPolicy,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=POLICY_RETRY,
        summary="resolve the rollout policy",
    )


async def observe_signals(inp: ObserveInput, *, summary: str) -> ObserveResult:
    """Observe the bake's signals once."""
    return await _call(
        names.OBSERVE_SIGNALS,
        inp,
        result_type=ObserveResult,
        start_to_close_timeout=timedelta(seconds=60),
        retry_policy=RetryPolicy(maximum_attempts=3),
        summary=summary,
    )


async def page(inp: PageInput, *, within: timedelta, summary: str) -> PageResult:
    """Page an owner through the policy's pager, giving up after ``within`` (at most 5 min)."""
    return await _call(
        names.PAGE,
        inp,
        result_type=PageResult,
        start_to_close_timeout=timedelta(seconds=30),
        schedule_to_close_timeout=min(within, timedelta(minutes=5)),
        retry_policy=RetryPolicy(non_retryable_error_types=list(errors.NON_RETRYABLE)),
        summary=summary,
    )


async def check_wave_timing(inp: WaveTimingInput, *, summary: str) -> WaveTimingResult:
    """Whether a wave may start now under the timing rules (change windows, freezes)."""
    return await _call(
        names.CHECK_WAVE_TIMING,
        inp,
        result_type=WaveTimingResult,
        start_to_close_timeout=timedelta(seconds=60),
        summary=summary,
        retry_policy=POLICY_RETRY,
    )


# --------------------------------------------------------------------------------- mutations

MUTATION_TIMEOUT = timedelta(minutes=5)
MUTATION_HEARTBEAT = timedelta(seconds=10)
MUTATION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    # Ten attempts ride out a target API that is down or partitioned for a minute or two; five
    # (with the kinds' full-jitter delays) covered ~15 s, and the chaos campaign saw 20-35 s fleet
    # faults roll good changes back (docs/chaos.md, finding 3).
    maximum_attempts=10,
    non_retryable_error_types=list(errors.NON_RETRYABLE),
)
COMPENSATION_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=list(errors.NON_RETRYABLE),
)


async def validate_change(inp: ValidateChangeInput, *, summary: str) -> ValidateChangeResult:
    """Validate a change's params with its kind (and learn the kind's activity options)."""
    return await _call(
        names.VALIDATE_CHANGE,
        inp,
        result_type=ValidateChangeResult,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(maximum_attempts=3),
        summary=summary,
    )


async def apply_change(
    inp: ApplyInput,
    *,
    start_to_close: timedelta,
    heartbeat: timedelta,
    summary: str,
) -> ApplyResult:
    """One mutation; on cancellation the workflow waits until the activity really stopped (I3)."""
    return await _call(
        names.APPLY_CHANGE,
        inp,
        result_type=ApplyResult,
        start_to_close_timeout=start_to_close,
        heartbeat_timeout=heartbeat,
        retry_policy=MUTATION_RETRY,
        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        summary=summary,
        priority=priorities.MUTATION,
    )


async def apply_change_many(
    inp: ApplyManyInput, *, start_to_close: timedelta, heartbeat: timedelta, summary: str
) -> ApplyManyResult:
    """Several targets' mutations in one activity (a chunk of a batch); cancelled as one mutation."""
    return await _call(
        names.APPLY_CHANGE_MANY,
        inp,
        result_type=ApplyManyResult,
        start_to_close_timeout=start_to_close,
        heartbeat_timeout=heartbeat,
        retry_policy=MUTATION_RETRY,
        cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        summary=summary,
        priority=priorities.MUTATION,
    )


async def revert_change(
    inp: ApplyInput, *, start_to_close: timedelta, heartbeat: timedelta, summary: str
) -> ApplyResult:
    """One compensation."""
    return await _call(
        names.REVERT_CHANGE,
        inp,
        result_type=ApplyResult,
        start_to_close_timeout=start_to_close,
        heartbeat_timeout=heartbeat,
        retry_policy=COMPENSATION_RETRY,
        summary=summary,
        priority=priorities.COMPENSATION,
    )


# --------------------------------------------------------------------------------- events, locks

DELIVERY_LIMIT = timedelta(minutes=30)
"""How long one change event is retried before it is dropped."""
DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
    non_retryable_error_types=list(errors.NON_RETRYABLE),
)
RELEASE_HEARTBEAT = timedelta(seconds=10)
"""``release_target_locks`` heartbeats per lock; a worker that dies in it costs this, not 2 min."""


async def send_change_event(event: ChangeEvent, *, summary: str) -> SendChangeEventResult:
    """Deliver one change event to the sink."""
    return await _call(
        names.SEND_CHANGE_EVENT,
        event,
        result_type=SendChangeEventResult,
        start_to_close_timeout=timedelta(seconds=30),
        schedule_to_close_timeout=DELIVERY_LIMIT,
        retry_policy=DELIVERY_RETRY,
        summary=summary,
    )


async def release_target_locks(inp: ReleaseLocksInput) -> int:
    """Give back a change's target locks (heartbeating per lock)."""
    return await _call(
        names.RELEASE_TARGET_LOCKS,
        inp,
        result_type=int,
        start_to_close_timeout=timedelta(minutes=2),
        # It heartbeats per lock: a worker that dies in it is noticed in seconds, not minutes.
        heartbeat_timeout=RELEASE_HEARTBEAT,
        retry_policy=RetryPolicy(maximum_attempts=5),
        summary="release target locks",
    )


async def holder_alive(inp: HolderAliveInput, *, summary: str) -> bool:
    """Whether a lock's holder is still running."""
    return await _call(
        names.HOLDER_ALIVE,
        inp,
        result_type=bool,
        start_to_close_timeout=timedelta(seconds=30),
        retry_policy=RetryPolicy(maximum_attempts=3),
        summary=summary,
    )
