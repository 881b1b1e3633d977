"""Build and run the changeguard worker."""

from __future__ import annotations

import asyncio
import signal
from datetime import timedelta
from typing import Any

import structlog
from temporalio.client import Client
from temporalio.worker import Worker

from worker import registry
from worker.settings import Settings

log = structlog.get_logger(__name__)


def build_worker(
    client: Client,
    settings: Settings | None = None,
    *,
    task_queue: str | None = None,
    max_cached_workflows: int = 1000,
    **activity_options: Any,
) -> Worker:
    """A worker for every workflow and activity in :mod:`worker.registry`.

    Args:
        client: a client made by :func:`worker.client.connect` (pydantic converter, tracing).
        settings: task queue, policy directory and slot counts (default: from the environment).
        task_queue: overrides the settings' task queue (tests use one per test).
        max_cached_workflows: 0 makes every workflow task replay from history (tests use it).
        activity_options: registries and services passed to :func:`worker.registry.activities`.
    """
    settings = settings or Settings.from_env()
    queue = task_queue or settings.task_queue
    activity_options.setdefault("services", {"temporal_client": client, "task_queue": queue})
    activity_options.setdefault("policy_dir", settings.policy_dir)
    activity_options.setdefault("pager_params", settings.pagers)
    if "audit" not in activity_options:
        from activities.audit import AuditActivities, open_audit_store

        activity_options["audit"] = AuditActivities(
            open_audit_store(settings.audit_url), settings.directory
        )
    return Worker(
        client,
        task_queue=queue,
        workflows=list(registry.WORKFLOWS),
        activities=registry.activities(**activity_options),
        interceptors=registry.interceptors(),
        max_cached_workflows=max_cached_workflows,
        max_concurrent_activities=settings.max_concurrent_activities,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


async def run_worker(client: Client, settings: Settings, stop: asyncio.Event) -> None:
    """Run a worker until ``stop`` is set, then shut it down gracefully."""
    worker = build_worker(client, settings)
    log.info("worker started", task_queue=settings.task_queue, address=settings.address)
    async with worker:
        await stop.wait()
    log.info("worker stopped")


async def serve(settings: Settings) -> None:
    """The ``changeguard worker`` command: connect and run until SIGINT/SIGTERM."""
    from worker.client import connect, ensure_search_attributes

    client = await connect(settings, serve_metrics=True)
    await ensure_search_attributes(client, settings.namespace)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run_worker(client, settings, stop)
