"""The one list of workflows and activities: the worker, the replayer and the tests all use it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from temporalio.worker import Interceptor

from activities.audit import AuditActivities
from activities.change import ChangeActivities
from activities.change_events import ChangeEventActivities, ChangeEventSink
from activities.identity import IdentityActivities
from activities.kinds.base import ChangeKind
from activities.monitoring import MonitoringActivities
from activities.pagers import PagerActivities
from guardrails.base import Guardrail
from guardrails.bundle import BundleHolder
from guardrails.plugins import PluginRegistry
from worker.logging import LoggingInterceptor
from workflows.batch import TargetBatchWorkflow
from workflows.change_events import ChangeEventsWorkflow
from workflows.gate import GuardrailGateWorkflow
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.target_lock import TargetLockWorkflow

WORKFLOWS: Sequence[type] = (
    GuardedChangeWorkflow,
    GuardrailGateWorkflow,
    TargetBatchWorkflow,
    TargetLockWorkflow,
    ChangeEventsWorkflow,
)
"""Every workflow class the worker runs and the replayer checks."""


def interceptors() -> list[Interceptor]:
    """Worker interceptors (tracing comes with the client's plug-in)."""
    return [LoggingInterceptor()]


def activities(
    *,
    guardrails: PluginRegistry[Guardrail[Any]] | None = None,
    kinds: PluginRegistry[ChangeKind[Any]] | None = None,
    services: dict[str, Any] | None = None,
    bundle: BundleHolder,
    audit: AuditActivities,
    pager_params: dict[str, dict[str, Any]] | None = None,
    change_events: ChangeEventSink | None = None,
) -> list[Callable[..., Any]]:
    """Every activity, bound to the given registries (default: the entry-point plug-ins).

    Guardrails receive ``services``; ``change_kinds`` is always among them, so a guardrail such as
    ``target-state`` can ask a change kind to describe a target. ``bundle`` holds the platform's
    policy bundle that every gate and bake resolves against at that moment. ``change_events`` is
    the worker's change-event sink (None: changes emit no events).
    """
    from activities.checks import CheckActivities
    from activities.kinds.base import default_registry as default_kinds
    from activities.timing import TimingActivities

    kinds = kinds if kinds is not None else default_kinds()
    services = {**(services or {}), "change_kinds": kinds}
    checks = CheckActivities(guardrails, bundle=bundle, services=services)
    # effects go to the change ledger
    change = ChangeActivities(kinds, ledger=audit.store, change_events=change_events is not None)
    events = ChangeEventActivities(change_events)
    locks = [] if "temporal_client" not in services else _lock_activities(services)
    monitoring = MonitoringActivities()
    identity = identity_activities(bundle, audit)
    pagers = PagerActivities(pager_params=pager_params)
    return [
        *locks,
        audit.record_audit,
        audit.claim_change,
        audit.load_directory,
        identity.verify_signature,
        monitoring.observe_signals,
        pagers.page,
        checks.resolve_policy,
        checks.resolve_rollout,
        checks.run_check,
        TimingActivities(checks).check_wave_timing,
        change.validate_change,
        change.apply_change,
        change.apply_change_many,
        change.revert_change,
        change.describe_target,
        events.send_change_event,
    ]


def identity_activities(bundle: BundleHolder, audit: AuditActivities) -> IdentityActivities:
    """``verify_signature`` over the audit activities' directory and the bundle's issuers.

    ``claim_change`` answers the bundle's identity requirements unless ``audit`` was given its own.
    """
    from activities.identity import issuers_of, requirements_of

    if audit.identity is None:
        audit.identity = lambda: requirements_of(bundle.current().policy.identity)
    return IdentityActivities(
        audit.directory, issuers=lambda: issuers_of(bundle.current().policy.identity)
    )


def _lock_activities(services: dict[str, Any]) -> list[Callable[..., Any]]:
    from activities.locks import LockActivities

    locks = LockActivities(services["temporal_client"])
    return [locks.release_target_locks, locks.holder_alive]
