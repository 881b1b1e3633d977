"""The one list of workflows and activities: the worker, the replayer and the tests all use it.

Also the worker's plug-ins (:class:`Plugins`): every registry loaded once from its entry-point
group when the worker starts, then handed to the activities, the bundle and the callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from temporalio.client import Client
from temporalio.worker import Interceptor

from activities.audit import AuditActivities
from activities.change import ChangeActivities
from activities.change_events import ChangeEventActivities, ChangeEventSink
from activities.directory import DIRECTORIES, DirectorySource
from activities.identity import IdentityActivities
from activities.kinds.base import CHANGE_KINDS, ChangeKind
from activities.monitoring import MonitoringActivities
from activities.pagers import PAGERS, Pager, PagerActivities
from guardrails.base import GUARDRAILS, Guardrail, Services
from guardrails.bundle import BundleHolder
from guardrails.plugins import PluginRegistry
from worker.eager import EagerDispatchInterceptor
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


@dataclass(frozen=True)
class Plugins:
    """The worker's plug-in registries, loaded once at start and handed to whatever needs one.

    :meth:`load` reads each entry-point group once; the worker (:func:`worker.main.serve`) builds
    one and passes it down, so nothing on the worker's path loads entry points again. Tests and
    embedded workers pass registries of their own (``Plugins.load(kinds=fakes.kinds())``).
    """

    guardrails: PluginRegistry[Guardrail[Any]]
    kinds: PluginRegistry[ChangeKind[Any]]
    pagers: PluginRegistry[Pager[Any]]
    directories: PluginRegistry[DirectorySource]

    @classmethod
    def load(
        cls,
        *,
        guardrails: PluginRegistry[Guardrail[Any]] | None = None,
        kinds: PluginRegistry[ChangeKind[Any]] | None = None,
        pagers: PluginRegistry[Pager[Any]] | None = None,
        directories: PluginRegistry[DirectorySource] | None = None,
    ) -> Plugins:
        """Every registry not given, from its entry-point group (each group read once)."""
        return cls(
            guardrails=guardrails if guardrails is not None else GUARDRAILS.default_registry(),
            kinds=kinds if kinds is not None else CHANGE_KINDS.default_registry(),
            pagers=pagers if pagers is not None else PAGERS.default_registry(),
            directories=directories if directories is not None else DIRECTORIES.default_registry(),
        )


def plugins_of(
    plugins: Plugins | None,
    *,
    guardrails: PluginRegistry[Guardrail[Any]] | None = None,
    kinds: PluginRegistry[ChangeKind[Any]] | None = None,
) -> Plugins:
    """``plugins`` with the registries given instead of its own (loaded when ``plugins`` is None)."""
    if plugins is None:
        return Plugins.load(guardrails=guardrails, kinds=kinds)
    if guardrails is None and kinds is None:
        return plugins
    return replace(
        plugins,
        guardrails=plugins.guardrails if guardrails is None else guardrails,
        kinds=plugins.kinds if kinds is None else kinds,
    )


def interceptors() -> list[Interceptor]:
    """Worker interceptors (tracing comes with the client's plug-in).

    Logging context for activities; eager dispatch for gate checks and compensations only
    (:mod:`worker.eager`).
    """
    return [LoggingInterceptor(), EagerDispatchInterceptor()]


def activities(
    *,
    plugins: Plugins | None = None,
    guardrails: PluginRegistry[Guardrail[Any]] | None = None,
    kinds: PluginRegistry[ChangeKind[Any]] | None = None,
    services: Services | None = None,
    bundle: BundleHolder,
    audit: AuditActivities,
    pager_params: dict[str, dict[str, Any]] | None = None,
    change_events: ChangeEventSink | None = None,
) -> list[Callable[..., Any]]:
    """Every activity, bound to the worker's plug-ins (default: loaded from the entry points).

    ``guardrails`` / ``kinds`` replace those of ``plugins``. Guardrails receive ``services``, whose
    ``change_kinds`` is always the kinds registry, so a guardrail such as ``target-state`` can ask a
    change kind to describe a target; the lock activities exist when it has a ``temporal_client``.
    ``bundle`` holds the platform's policy bundle that every gate and bake resolves against at that
    moment. ``change_events`` is the worker's change-event sink (None: changes emit no events).
    """
    from activities.checks import CheckActivities
    from activities.timing import TimingActivities

    if services is not None and not isinstance(services, Services):
        raise TypeError(
            f"services must be a guardrails.base.Services, not a {type(services).__name__}: "
            "write services=Services(temporal_client=client, task_queue=queue, extra={...})"
        )
    plugins = plugins_of(plugins, guardrails=guardrails, kinds=kinds)
    services = replace(services or Services(), change_kinds=plugins.kinds)
    checks = CheckActivities(plugins.guardrails, bundle=bundle, services=services)
    # effects go to the change ledger
    change = ChangeActivities(
        plugins.kinds, ledger=audit.store, change_events=change_events is not None
    )
    events = ChangeEventActivities(change_events)
    locks = [] if services.temporal_client is None else _lock_activities(services.temporal_client)
    monitoring = MonitoringActivities()
    identity = identity_activities(bundle, audit)
    pagers = PagerActivities(plugins.pagers, pager_params=pager_params)
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


def _lock_activities(client: Client) -> list[Callable[..., Any]]:
    from activities.locks import LockActivities

    locks = LockActivities(client)
    return [locks.release_target_locks, locks.holder_alive]
