"""Build and run the changeguard worker.

A worker holds the platform's policy bundle (``CHANGEGUARD_POLICY``): it refuses to start without
one, or with one that does not validate (fail closed), and watches its files while it runs so that
an edit reaches running changes at their next gate.

With ``CHANGEGUARD_DEPLOYMENT`` set, a worker joins that Worker Deployment as version
``<deployment>.<build id>`` (Worker Deployment Versioning, ``docs/versioning.md``): the server routes
each pinned change only to workers of the version it started on, and new changes to the
deployment's current version, which :func:`set_current_version` moves (``--set-current``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from datetime import timedelta
from typing import Any

import structlog
from temporalio.api.deployment.v1 import WorkerDeploymentInfo
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker, WorkerDeploymentConfig

from guardrails.base import Guardrail, Services
from guardrails.bundle import Bundle, BundleError, BundleHolder
from guardrails.plugins import PluginRegistry
from worker import gctune, registry, sdk_shims, telemetry, waiting
from worker.settings import Settings
from workflows.progress_models import HEARTBEAT_THROTTLE

log = structlog.get_logger(__name__)

POLICY_MISSING = (
    "no platform policy bundle: set CHANGEGUARD_POLICY to its YAML file or directory "
    "(e.g. CHANGEGUARD_POLICY=demo/platform); workers fail closed without one"
)
REFUSED_METRIC = "changeguard_policy_bundle_refused"


class PolicyMissing(BundleError):
    """The worker was given no policy bundle at all."""

    def __init__(self) -> None:
        super().__init__([POLICY_MISSING], source="CHANGEGUARD_POLICY")


BundleSpec = BundleHolder | Bundle | dict[str, Any]
"""What ``build_worker(bundle=...)`` takes: a holder, a loaded bundle, or a bundle mapping."""


def load_holder(settings: Settings, guardrails: PluginRegistry[Guardrail[Any]]) -> BundleHolder:
    """The bundle the settings name (``CHANGEGUARD_POLICY``), validated against ``guardrails``.

    Raises:
        PolicyMissing: no bundle is configured.
        BundleError: the bundle is invalid (every problem, located).

    """
    if settings.policy is None:
        raise PolicyMissing()
    return BundleHolder.load(settings.policy, registry=guardrails)


def _holder(spec: BundleSpec) -> BundleHolder:
    return spec if isinstance(spec, BundleHolder) else BundleHolder.fixed(spec)


class ChangeguardWorker(Worker):
    """A Temporal worker that watches its policy bundle while it runs."""

    bundle: BundleHolder
    plugins: registry.Plugins

    async def run(self) -> None:
        """Run the worker (and the bundle's watcher) until it is shut down."""
        self.bundle.start()
        try:
            await super().run()
        finally:
            await self.bundle.stop()


def eager_options(settings: Settings) -> dict[str, Any]:
    """The worker's eager-dispatch options (:mod:`worker.eager`): off when the setting is 0."""
    if settings.eager_activities == 0:
        return {"disable_eager_activity_execution": True}
    return {"max_eager_activity_reservations_per_workflow_task": settings.eager_activities}


def deployment_config(settings: Settings) -> WorkerDeploymentConfig | None:
    """The worker's versioning options: ``None`` (unversioned) unless a deployment is set.

    The default behaviour is Pinned, the behaviour of ``GuardedChange``, ``GuardrailGate`` and
    ``TargetBatch`` (a change finishes on the build that started it); a workflow's own
    ``versioning_behavior=`` (``TargetLock``: Auto-Upgrade) takes precedence.
    """
    version = settings.deployment_version()
    if version is None:
        return None
    return WorkerDeploymentConfig(
        version=version,
        use_worker_versioning=True,
        default_versioning_behavior=VersioningBehavior.PINNED,
    )


class DeploymentError(RuntimeError):
    """The server did not register, or refused to make current, a deployment version."""


async def describe_deployment(client: Client, name: str) -> WorkerDeploymentInfo | None:
    """The server's view of a Worker Deployment (versions, drainage, routing), or ``None``.

    The server rate-limits calls per deployment (``RESOURCE_EXHAUSTED``, "too many requests issued
    to Worker Deployment"), most of all while a new version registers: those are retried.
    """
    delay = 0.2
    for _ in range(8):
        try:
            response = await client.workflow_service.describe_worker_deployment(
                DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=name)
            )
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:  # no worker of it has polled yet
                return None
            if exc.status is not RPCStatusCode.RESOURCE_EXHAUSTED:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        return response.worker_deployment_info
    raise DeploymentError(f"the server kept refusing to describe deployment {name!r} (rate limit)")


async def wait_for_version(
    client: Client, version: WorkerDeploymentVersion, *, within: float = 30.0
) -> WorkerDeploymentInfo:
    """Wait until the server lists ``version`` (its workers register it by polling).

    Raises:
        DeploymentError: it did not appear within ``within`` seconds.
    """
    deadline = time.monotonic() + within
    while True:
        info = await describe_deployment(client, version.deployment_name)
        if info is not None and any(
            v.deployment_version.build_id == version.build_id for v in info.version_summaries
        ):
            return info
        if time.monotonic() > deadline:
            raise DeploymentError(
                f"version {version.to_canonical_string()} did not register within {within:g}s; "
                "is a worker of that build polling?"
            )
        await asyncio.sleep(0.5)


async def set_current_version(
    client: Client, version: WorkerDeploymentVersion, *, within: float = 30.0
) -> str:
    """Make ``version`` its deployment's current version; returns the previous one's build id.

    New changes (and Auto-Upgrade workflows such as target locks, at their next task) go to the
    current version; pinned changes stay where they started. Waits for the version to register.

    Raises:
        DeploymentError: the version did not register, or the server refused the change.
    """
    await wait_for_version(client, version, within=within)
    request = SetWorkerDeploymentCurrentVersionRequest(
        namespace=client.namespace,
        deployment_name=version.deployment_name,
        build_id=version.build_id,
        identity=client.identity,
    )
    delay = 0.2
    for attempt in range(8):
        try:
            response = await client.workflow_service.set_worker_deployment_current_version(request)
            break
        except RPCError as exc:
            if exc.status is not RPCStatusCode.RESOURCE_EXHAUSTED or attempt == 7:
                raise DeploymentError(
                    f"cannot make {version.to_canonical_string()} current: {exc.message}"
                ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
    return response.previous_deployment_version.build_id


def _count_refusals(client: Client, holder: BundleHolder) -> None:
    """Count refused bundle edits in the runtime's metrics (Prometheus when it is served)."""
    try:
        runtime = client.service_client.config.runtime or Runtime.default()
        counter = runtime.metric_meter.create_counter(
            REFUSED_METRIC, "policy bundle edits refused (the last good bundle stayed in force)"
        )
    except Exception:  # a client without a runtime (a test double): logs still say it
        return
    holder.on_refused = lambda: counter.add(1)


def build_worker(
    client: Client,
    settings: Settings | None = None,
    *,
    task_queue: str | None = None,
    max_cached_workflows: int = 1000,
    bundle: BundleSpec | None = None,
    plugins: registry.Plugins | None = None,
    **activity_options: Any,
) -> ChangeguardWorker:
    """A worker for every workflow and activity in :mod:`worker.registry`.

    Args:
        client: a client made by :func:`worker.client.connect` (pydantic converter, tracing).
        settings: task queue, policy bundle, slot counts and deployment version (default: from
            the environment; a deployment makes the worker versioned, see
            :func:`deployment_config`).
        task_queue: overrides the settings' task queue (tests use one per test).
        max_cached_workflows: 0 makes every workflow task replay from history (tests use it).
        bundle: the platform bundle to hold (a holder, a bundle, or a mapping); default: the one
            ``settings.policy`` names, watched for edits.
        plugins: the worker's plug-in registries, loaded once (:class:`worker.registry.Plugins`);
            default: loaded from the entry points now. ``guardrails=`` / ``kinds=`` in
            ``activity_options`` replace one of them (tests pass fakes).
        activity_options: options of :func:`worker.registry.activities` (``services`` …);
            an ``audit`` given here records the bundle hash only if it was built with
            ``bundle_hash=`` (the holder's ``current_hash``).

    Raises:
        PolicyMissing: neither ``bundle`` nor ``settings.policy`` names a bundle.
        BundleError: the bundle is invalid.

    """
    settings = settings or Settings.from_env()
    queue = task_queue or settings.task_queue
    plugins = registry.plugins_of(
        plugins,
        guardrails=activity_options.pop("guardrails", None),
        kinds=activity_options.pop("kinds", None),
    )
    holder = load_holder(settings, plugins.guardrails) if bundle is None else _holder(bundle)
    _count_refusals(client, holder)
    activity_options.setdefault("services", Services(temporal_client=client, task_queue=queue))
    activity_options.setdefault("pager_params", settings.pagers)
    if "change_events" not in activity_options and settings.change_events_url:
        from activities.change_events import ChangeEventSink

        activity_options["change_events"] = ChangeEventSink(
            url=settings.change_events_url,
            routing_key=settings.change_events_routing_key,
            source=settings.change_events_source,
            link=settings.workflow_url,
        )
    if "audit" not in activity_options:
        from activities.audit import AuditActivities, open_audit_store

        activity_options["audit"] = AuditActivities(
            open_audit_store(settings.audit_url),
            settings.directory,
            directories=plugins.directories,
            bundle_hash=holder.current_hash,  # each change's `started` record names the bundle
        )
    sdk_shims.install()  # the SDK's payload passes cost nothing without a codec (worker/sdk_shims.py)
    worker = ChangeguardWorker(
        client,
        task_queue=queue,
        workflows=list(registry.WORKFLOWS),
        activities=registry.activities(plugins=plugins, bundle=holder, **activity_options),
        interceptors=registry.interceptors(),
        max_cached_workflows=max_cached_workflows,
        max_concurrent_activities=settings.max_concurrent_activities,
        graceful_shutdown_timeout=timedelta(seconds=10),
        deployment_config=deployment_config(settings),
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,  # status sees every beat
        **eager_options(settings),
    )
    worker.bundle = holder
    worker.plugins = plugins
    return worker


async def _serve_handoff_callbacks(
    stack: contextlib.AsyncExitStack, client: Client, settings: Settings, plugins: registry.Plugins
) -> None:
    """Serve the hand-off callback endpoint (docs/long-running-changes.md) when it is configured.

    Kinds that hand work to external systems need it; without ``CHANGEGUARD_CALLBACK_SECRET`` they
    cannot run, which the log says once (every other kind is unaffected).
    """
    from activities.audit import open_audit_store
    from activities.kinds.handoff import SECRET_ENV
    from worker.callbacks import serve_callbacks

    if not os.environ.get(SECRET_ENV):
        log.info(f"hand-off callbacks off: set {SECRET_ENV} to run hand-off change kinds")
        return
    store = open_audit_store(settings.audit_url)
    stack.callback(store.close)
    url = await stack.enter_async_context(
        serve_callbacks(client, kinds=plugins.kinds, ledger=store)
    )
    log.info("hand-off callbacks on", url=url)


async def run_worker(
    client: Client, settings: Settings, stop: asyncio.Event, **options: Any
) -> None:
    """Run a worker until ``stop`` is set, then shut it down gracefully.

    ``options`` go to :func:`build_worker` (``bundle``, ``plugins``, registries). With
    ``settings.set_current`` the worker's version becomes its deployment's current one once the
    server has registered it.
    """
    worker = build_worker(client, settings, **options)
    version = settings.deployment_version()
    log.info(
        "worker started",
        task_queue=settings.task_queue,
        address=settings.address,
        policy=str(settings.policy),
        bundle_hash=worker.bundle.current_hash(),
        deployment_version=version.to_canonical_string() if version else "unversioned",
    )
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(worker)
        await _serve_handoff_callbacks(stack, client, settings, worker.plugins)
        if version is not None and settings.set_current:
            previous = await set_current_version(client, version)
            log.info(
                "deployment version is current",
                deployment_version=version.to_canonical_string(),
                previous_build_id=previous or None,
            )
        await stop.wait()
    log.info("worker stopped")


async def serve(settings: Settings) -> None:
    """The ``changeguard worker`` command: connect and run until SIGINT/SIGTERM.

    Raises:
        PolicyMissing: no ``CHANGEGUARD_POLICY`` (checked before connecting).
        BundleError: the bundle is invalid.

    """
    from worker.client import connect, ensure_search_attributes

    plugins = registry.Plugins.load()  # every entry-point group, once, for the whole worker
    holder = load_holder(settings, plugins.guardrails)  # before connecting: a bad bundle is exit 2
    interval = waiting.interval_from_env()
    client = await connect(settings, serve_metrics=True)
    await ensure_search_attributes(client, settings.namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tuning = gctune.tune(settings.gc_tuning)  # start-up is over: freeze what it made
    log.info(
        "garbage collector " + ("tuned" if settings.gc_tuning else "left at CPython's defaults"),
        frozen_objects=tuning.frozen,
        thresholds=list(tuning.thresholds),
    )
    try:
        async with waiting.sampling(client, telemetry.runtime(settings.metrics_bind), interval):
            await run_worker(client, settings, stop, bundle=holder, plugins=plugins)
    finally:
        telemetry.flush()  # the process may exit without finalising (cli.main.entry)
