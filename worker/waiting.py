"""How many changes wait for a person, and for how long: gauges for the "waiting too long" alerts.

A change's own metrics are counted when something happens; a change that sits in
``AwaitingApproval`` or ``Blocked`` makes nothing happen. So a worker serving metrics samples them
every ``CHANGEGUARD_WAITING_SAMPLE_S`` seconds (default 60; 0 turns it off): a visibility query
lists the running changes in those phases (``ChangePhase`` search attribute, at most
:data:`LIMIT`), and each one's ``status`` query says since when (``updated_at``, set when it
entered the phase). It sets, per phase:

- ``changeguard_changes_waiting{phase}``: how many changes are in it;
- ``changeguard_changes_waiting_longest_seconds{phase}``: how long the longest-waiting one has been.

Every replica samples the same changes; alerts take the ``max`` over instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.runtime import Runtime

from worker.settings import SettingsError
from workflows import names
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.models import ChangeStatus, Phase

log = structlog.get_logger(__name__)

WAITING_PHASES = (Phase.AWAITING_APPROVAL, Phase.BLOCKED)
LIMIT = 200
"""At most this many waiting changes are queried per sample (the count stays exact up to it)."""
QUERY_CONCURRENCY = 8
INTERVAL_ENV = "CHANGEGUARD_WAITING_SAMPLE_S"


@dataclass(frozen=True)
class Waiting:
    """One phase's sample: how many changes, and the longest wait in seconds."""

    count: int
    longest_s: float


async def sample(client: Client, *, now: datetime | None = None) -> dict[Phase, Waiting]:
    """Count the running changes in each waiting phase and find the longest wait."""
    phases = ", ".join(f"'{p.value}'" for p in WAITING_PHASES)
    query = (
        f"WorkflowType = '{names.GUARDED_CHANGE}' AND ExecutionStatus = 'Running' "
        f"AND ChangePhase IN ({phases})"
    )
    ids = [w.id async for w in client.list_workflows(query, limit=LIMIT)]
    limit = asyncio.Semaphore(QUERY_CONCURRENCY)

    async def status(workflow_id: str) -> ChangeStatus | None:
        async with limit:
            try:
                handle = client.get_workflow_handle_for(GuardedChangeWorkflow.run, workflow_id)
                return await handle.query(GuardedChangeWorkflow.status)
            except Exception as exc:  # closed since the listing, or no worker: skip it
                log.debug("waiting sample skipped a change", change_id=workflow_id, error=str(exc))
                return None

    statuses = await asyncio.gather(*(status(i) for i in ids))
    now = now or datetime.now(UTC)
    found: dict[Phase, Waiting] = {p: Waiting(0, 0.0) for p in WAITING_PHASES}
    for s in statuses:
        if s is None or s.phase not in found:
            continue
        waited = (now - s.updated_at).total_seconds() if s.updated_at else 0.0
        previous = found[s.phase]
        found[s.phase] = Waiting(previous.count + 1, max(previous.longest_s, waited))
    return found


def publish(meter: MetricMeter, found: dict[Phase, Waiting]) -> None:
    """Set the two gauges of each waiting phase."""
    count = meter.create_gauge("changeguard_changes_waiting", "changes waiting for a person")
    longest = meter.create_gauge_float(
        "changeguard_changes_waiting_longest_seconds",
        "how long the longest-waiting change has waited",
    )
    for phase, w in found.items():
        count.set(w.count, {"phase": phase.value})
        longest.set(w.longest_s, {"phase": phase.value})


async def run_sampler(client: Client, runtime: Runtime, interval_s: float) -> None:
    """Sample every ``interval_s`` seconds until cancelled; a failed sample is logged and retried."""
    meter = runtime.metric_meter
    while True:
        try:
            publish(meter, await sample(client))
        except Exception as exc:
            log.warning("sampling waiting changes failed", error=str(exc))
        await asyncio.sleep(interval_s)


def interval_from_env(env: Mapping[str, str] | None = None) -> float:
    """``CHANGEGUARD_WAITING_SAMPLE_S`` (seconds; default 60, 0 turns sampling off).

    Raises:
        SettingsError: it is not a number of seconds (the message names the variable).
    """
    raw = (os.environ if env is None else env).get(INTERVAL_ENV, "60")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0 or value != value:
        raise SettingsError(
            f"{INTERVAL_ENV}={raw!r}: give seconds between samples (0 turns it off)"
        )
    return value


@contextlib.asynccontextmanager
async def sampling(
    client: Client, runtime: Runtime | None, interval_s: float
) -> AsyncIterator[None]:
    """Run :func:`run_sampler` in the background for the block (nothing without a runtime)."""
    if runtime is None or interval_s <= 0:
        yield
        return
    task = asyncio.create_task(run_sampler(client, runtime, interval_s))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
