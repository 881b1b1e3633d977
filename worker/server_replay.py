"""The replay gate fed by the live server (``changeguard replay --from-server``).

:func:`replay_server_sample` downloads a recent sample of every workflow type the registry holds,
replays each, and counts them per type; the CLI can then save the histories whose shape the
committed corpus lacks (:func:`worker.histories.save_new_shapes`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode

from worker import registry
from worker.histories import Progress, history_ids
from worker.replayer import Loaded, ReplayReport, replay_loaded

DEFAULT_SAMPLE = 50
"""Runs per workflow type ``changeguard replay --from-server`` downloads when given no ``--sample``."""
DEFAULT_SINCE = timedelta(days=7)
"""How far back ``--from-server`` looks for closed runs (running ones are always included)."""
FETCH_CONCURRENCY = 8


@dataclass(frozen=True)
class Skipped:
    """A run listed on the server that was not replayed, and why."""

    workflow_id: str
    workflow_type: str
    run_id: str
    reason: str


@dataclass(frozen=True)
class TypeCounts:
    """Per workflow type: histories replayed (ok or not), skipped, and failed."""

    replayed: int = 0
    skipped: int = 0
    failed: int = 0


@dataclass(frozen=True)
class ServerReplay:
    """What :func:`replay_server_sample` listed, replayed and skipped, and how long it took.

    Attributes:
        report: every replayed history's result.
        skipped: runs listed but not replayed (history gone, no workflow task completed yet,
            a workflow type this code does not register).
        histories: the replayed histories, in the order of ``report.results``.
        fetch_seconds: time spent listing and downloading.
        query: the visibility filter each workflow type's listing used.
    """

    report: ReplayReport
    skipped: list[Skipped]
    histories: list[WorkflowHistory]
    fetch_seconds: float
    query: str

    @property
    def ok(self) -> bool:
        """At least one history replayed, and every one did."""
        return self.report.ok

    def by_type(self) -> dict[str, TypeCounts]:
        """Counts per workflow type, every registered type included (zeros too)."""
        names = [*registered_types(), *(r.workflow_type for r in self.report.results)]
        names += [s.workflow_type for s in self.skipped]
        out: dict[str, TypeCounts] = {}
        for name in dict.fromkeys(names):
            results = [r for r in self.report.results if r.workflow_type == name]
            out[name] = TypeCounts(
                replayed=len(results),
                skipped=sum(s.workflow_type == name for s in self.skipped),
                failed=sum(not r.ok for r in results),
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: per type, every failure and skip, timings."""
        return {
            **self.report.to_dict(),
            "query": self.query,
            "fetch_seconds": round(self.fetch_seconds, 3),
            "by_type": {name: asdict(c) for name, c in self.by_type().items()},
            "skipped": [asdict(s) for s in self.skipped],
        }


def registered_types(workflows: Sequence[type] | None = None) -> list[str]:
    """The workflow type names of the registry (or of ``workflows``)."""
    import temporalio.workflow

    names = []
    for cls in registry.WORKFLOWS if workflows is None else workflows:
        name = temporalio.workflow._Definition.must_from_class(cls).name
        if name is not None:
            names.append(name)
    return names


def server_query(workflow_type: str, *, since: timedelta | None, query: str | None) -> str:
    """The visibility query for one type: recent closed runs and every running one."""
    parts = [f"WorkflowType = '{workflow_type}'"]
    if since is not None:
        cutoff = (datetime.now(UTC) - since).strftime("%Y-%m-%dT%H:%M:%SZ")
        parts.append(f"(StartTime > '{cutoff}' OR ExecutionStatus = 'Running')")
    if query:
        parts.append(f"({query})")
    return " AND ".join(parts)


async def replay_server_sample(
    client: Client,
    *,
    query: str | None = None,
    sample: int = DEFAULT_SAMPLE,
    since: timedelta | None = DEFAULT_SINCE,
    workflows: Sequence[type] | None = None,
    progress: Progress | None = None,
) -> ServerReplay:
    """Download a recent sample of every registered workflow type's runs and replay them.

    Args:
        client: a client from :func:`worker.client.connect`.
        query: a visibility filter ANDed to each type's listing (e.g. ``TaskQueue = 'x'``).
        sample: at most this many runs per workflow type (the server lists newest first).
        since: closed runs started within this long ago (running runs always count); ``None``:
            any age.
        workflows: replace the registry's workflows (tests replay a deliberately broken one).
        progress: receives progress lines (listing, downloading, replaying).
    """
    started = time.monotonic()
    types = registered_types(workflows)
    listed: list[tuple[str, str, str]] = []
    for name in types:
        q = server_query(name, since=since, query=query)
        found = [
            (w.id, w.run_id or "", w.workflow_type)
            async for w in client.list_workflows(q, limit=sample)
        ]
        listed.extend(found)
        if progress is not None:
            progress(f"{name}: {len(found)} runs listed")
    semaphore = asyncio.Semaphore(FETCH_CONCURRENCY)
    done = 0

    async def fetch(workflow_id: str, run_id: str) -> WorkflowHistory | str:
        nonlocal done
        async with semaphore:
            try:
                history = await client.get_workflow_handle(
                    workflow_id, run_id=run_id
                ).fetch_history()
            except RPCError as exc:
                if exc.status is not RPCStatusCode.NOT_FOUND:
                    raise
                history_or_reason: WorkflowHistory | str = "history gone (retention)"
            else:
                history_or_reason = history
        done += 1
        if progress is not None and (done % 25 == 0 or done == len(listed)):
            progress(f"downloaded {done}/{len(listed)} histories")
        return history_or_reason

    fetched = await asyncio.gather(*(fetch(wid, rid) for wid, rid, _ in listed))
    skipped: list[Skipped] = []
    loaded: Loaded = []
    for (workflow_id, run_id, workflow_type), got in zip(listed, fetched, strict=True):
        reason = got if isinstance(got, str) else _skip_reason(got, types)
        if reason:
            skipped.append(Skipped(workflow_id, workflow_type, run_id, reason))
        else:
            assert not isinstance(got, str)
            loaded.append((len(loaded), "server", got))
    fetch_seconds = time.monotonic() - started
    replay_started = time.monotonic()
    results = [r for _, r in await replay_loaded(loaded, workflows, progress)]
    report = ReplayReport(results, time.monotonic() - replay_started)
    return ServerReplay(
        report,
        skipped,
        [h for _, _, h in loaded],
        fetch_seconds,
        server_query("<type>", since=since, query=query),
    )


def _skip_reason(history: WorkflowHistory, types: list[str]) -> str:
    """Why a history proves nothing here ("" when it should be replayed)."""
    if not history.events:
        return "empty history"
    _, workflow_type = history_ids(history)
    if workflow_type not in types:
        return f"workflow type {workflow_type!r} is not registered"
    if not any(e.HasField("workflow_task_completed_event_attributes") for e in history.events):
        return "no workflow task completed yet (no command to compare)"
    return ""
