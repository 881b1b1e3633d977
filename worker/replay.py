"""Replay recorded histories against the current workflow code, set up exactly like the worker.

A replay feeds a recorded history to today's workflow code and checks that the code issues the same
commands in the same order. A mismatch is non-determinism: deployed, that code would fail the
workflow tasks of every running workflow with such a history (see ``docs/versioning.md``).

The replayer takes its workflows and interceptors from :mod:`worker.registry`, the pydantic data
converter, and the worker-side half of the client's plug-ins (:func:`worker.telemetry.client_plugins`:
the OpenTelemetry plug-in adds its workflow interceptor and the ``opentelemetry`` sandbox
pass-through), just as a :class:`temporalio.worker.Worker` built on our client receives them.

Histories come from JSON files (``WorkflowHistory.to_json``, ``temporal workflow show -o json``) or
from a server through a visibility query; each yields one :class:`ReplayResult`.

:func:`replay_server_sample` is the replay gate fed by the live server (``changeguard replay
--from-server``): a recent sample of every workflow type the registry holds, each replayed, counted
per type, and optionally saved into the committed corpus when it adds branch coverage
(:func:`event_shape`, :func:`save_new_shapes`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import temporalio.worker
from google.protobuf import json_format
from temporalio.client import Client, WorkflowHistory
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from worker import registry
from worker.converter import data_converter
from worker.telemetry import client_plugins

DEFAULT_QUERY = "WorkflowType = 'GuardedChange' OR WorkflowType = 'GuardrailGate'"
"""The server histories ``changeguard replay --query`` checks when given no query."""
DEFAULT_LIMIT = 50
DEFAULT_SAMPLE = 50
"""Runs per workflow type ``changeguard replay --from-server`` downloads when given no ``--sample``."""
DEFAULT_SINCE = timedelta(days=7)
"""How far back ``--from-server`` looks for closed runs (running ones are always included)."""
FETCH_CONCURRENCY = 8

Progress = Callable[[str], None]
"""Receives one line of progress at a time (the CLI prints them on stderr)."""


@dataclass(frozen=True)
class ReplayResult:
    """The outcome of replaying one history.

    Attributes:
        source: the history file, or ``server`` for a history fetched from Temporal.
        workflow_id: the workflow id (from the history, else the file name).
        workflow_type: the workflow type the history ran.
        run_id: the run the history belongs to.
        ok: the current code replays the history.
        error: why it does not (empty when ``ok``).
        nondeterministic: the failure is non-determinism (not a bug or an unreadable file).
        mismatch: the first mismatching command as the SDK names it, when it could be found.
    """

    source: str
    workflow_id: str
    workflow_type: str
    run_id: str
    ok: bool
    error: str = ""
    nondeterministic: bool = False
    mismatch: str = ""


@dataclass(frozen=True)
class ReplayReport:
    """Every history replayed in one call, in input order, and how long it took."""

    results: list[ReplayResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every history replayed (and there was at least one)."""
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def failed(self) -> list[ReplayResult]:
        """The histories that did not replay."""
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary and every result."""
        return {
            "ok": self.ok,
            "replayed": len(self.results),
            "failed": len(self.failed),
            "seconds": round(self.seconds, 3),
            "results": [asdict(r) for r in self.results],
        }


def worker_plugins() -> list[temporalio.worker.Plugin]:
    """The client's plug-ins that also configure workers (a Worker picks these up from its client)."""
    return [p for p in client_plugins() if isinstance(p, temporalio.worker.Plugin)]


def build_replayer(*, workflows: Sequence[type] | None = None) -> Replayer:
    """A replayer configured like :func:`worker.main.build_worker`.

    Args:
        workflows: replace the registry's workflows (tests replay a deliberately broken one).
    """
    return Replayer(
        workflows=list(registry.WORKFLOWS if workflows is None else workflows),
        interceptors=registry.interceptors(),
        data_converter=data_converter,
        plugins=worker_plugins(),
        runtime=_quiet_runtime(),
    )


_MISMATCH = re.compile(
    # The core's wording, e.g. ``[TMPRL1100] Nondeterminism error: Activity type of scheduled event
    # 'validate_change' does not match activity type of activity command 'describe_target'``, as
    # plain text or inside the debug form of a Failure (``message: "…", source: …``).
    r"Nondeterminism(?: error)?:\s*(?P<what>(?:[^\"\\]|\\.)+)",
    re.IGNORECASE,
)


def first_mismatch(message: str) -> str:
    """The first mismatching command named in a non-determinism error, or ``""``."""
    m = _MISMATCH.search(message)
    if m is None:
        return ""
    return " ".join(m.group("what").replace('\\"', '"').split())


@cache
def _quiet_runtime() -> Runtime:
    """A core runtime that logs errors only: each replay failure is reported in its result."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
        )
    )


def history_ids(history: WorkflowHistory) -> tuple[str, str]:
    """The workflow id recorded in a history (empty if the server did not record it) and its type."""
    if not history.events:
        return "", ""
    started = history.events[0].workflow_execution_started_event_attributes
    return started.workflow_id, started.workflow_type.name


def load_history(path: Path) -> WorkflowHistory:
    """Read one JSON history file; the workflow id comes from the history, else the file name.

    Raises:
        ValueError: the file is not JSON, or not a workflow history.
        google.protobuf.json_format.Error: the JSON does not fit the history's schema.
    """
    raw = json.loads(path.read_text())
    history = WorkflowHistory.from_json(path.stem, raw)
    if not history.events or not history.events[0].HasField(
        "workflow_execution_started_event_attributes"
    ):
        raise ValueError("not a workflow history (no WorkflowExecutionStarted event first)")
    workflow_id, _ = history_ids(history)
    if workflow_id:
        history = WorkflowHistory(workflow_id, history.events)
    return history


def history_files(paths: Iterable[Path | str]) -> list[Path]:
    """Every ``*.json`` file named, or inside a named directory, sorted within each directory."""
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.glob("*.json")) if p.is_dir() else [p])
    return files


async def replay_files(
    paths: Iterable[Path | str], *, workflows: Sequence[type] | None = None
) -> ReplayReport:
    """Replay JSON history files (or every ``*.json`` in the directories given).

    Args:
        paths: files and directories.
        workflows: replace the registry's workflows (tests only).

    Returns:
        One result per file, in order; an unreadable file is a failed result.
    """
    started = time.monotonic()
    results: dict[int, ReplayResult] = {}
    loaded: list[tuple[int, str, WorkflowHistory]] = []
    for i, path in enumerate(history_files(paths)):
        try:
            loaded.append((i, str(path), load_history(path)))
        except (OSError, ValueError, json_format.Error) as exc:
            error = f"cannot read history: {exc}"
            results[i] = ReplayResult(str(path), path.stem, "", "", ok=False, error=error)
    for i, result in await _replay(loaded, workflows):
        results[i] = result
    return ReplayReport([results[i] for i in sorted(results)], time.monotonic() - started)


async def replay_from_server(
    client: Client,
    query: str | None = None,
    limit: int = DEFAULT_LIMIT,
    *,
    workflows: Sequence[type] | None = None,
) -> ReplayReport:
    """Replay the histories of the workflows a visibility query lists (most recent first).

    Args:
        client: a client from :func:`worker.client.connect`.
        query: a visibility query (default :data:`DEFAULT_QUERY`).
        limit: at most this many workflow runs.
        workflows: replace the registry's workflows (tests only).
    """
    started = time.monotonic()
    loaded: list[tuple[int, str, WorkflowHistory]] = []
    i = 0
    async for execution in client.list_workflows(query or DEFAULT_QUERY, limit=limit):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        loaded.append((i, "server", await handle.fetch_history()))
        i += 1
    results = [r for _, r in await _replay(loaded, workflows)]
    return ReplayReport(results, time.monotonic() - started)


async def _replay(
    loaded: list[tuple[int, str, WorkflowHistory]],
    workflows: Sequence[type] | None,
    progress: Progress | None = None,
) -> list[tuple[int, ReplayResult]]:
    if not loaded:
        return []

    async def histories() -> AsyncIterator[WorkflowHistory]:
        for _, _, history in loaded:
            yield history

    out: list[tuple[int, ReplayResult]] = []
    replayer = build_replayer(workflows=workflows)
    async with replayer.workflow_replay_iterator(histories()) as replayed:
        pending = iter(loaded)
        async for outcome in replayed:
            i, source, history = next(pending)
            assert outcome.history is history, "the replayer answers in input order"
            out.append((i, _result(source, history, outcome.replay_failure)))
            if progress is not None and (len(out) % 25 == 0 or len(out) == len(loaded)):
                failed = sum(not r.ok for _, r in out)
                progress(f"replayed {len(out)}/{len(loaded)} ({failed} failed)")
    return out


def _result(source: str, history: WorkflowHistory, failure: Exception | None) -> ReplayResult:
    _, workflow_type = history_ids(history)
    ids = (source, history.workflow_id, workflow_type, history.run_id)
    if failure is None:
        return ReplayResult(*ids, ok=True)
    nondeterministic = isinstance(failure, NondeterminismError)
    message = str(failure).strip() or type(failure).__name__
    return ReplayResult(
        *ids,
        ok=False,
        error=message,
        nondeterministic=nondeterministic,
        mismatch=first_mismatch(message) if nondeterministic else "",
    )


# ------------------------------------------------------------------ the gate fed by the server


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
    loaded: list[tuple[int, str, WorkflowHistory]] = []
    for (workflow_id, run_id, workflow_type), got in zip(listed, fetched, strict=True):
        reason = got if isinstance(got, str) else _skip_reason(got, types)
        if reason:
            skipped.append(Skipped(workflow_id, workflow_type, run_id, reason))
        else:
            assert not isinstance(got, str)
            loaded.append((len(loaded), "server", got))
    fetch_seconds = time.monotonic() - started
    replay_started = time.monotonic()
    results = [r for _, r in await _replay(loaded, workflows, progress)]
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


# ------------------------------------------------------------------ branch coverage by shape

_NOISE = {
    # Which worker ran a task, when, and how many tasks it took: timing, not branches.
    "workflow_task_scheduled_event_attributes",
    "workflow_task_started_event_attributes",
    "workflow_task_completed_event_attributes",
    "workflow_task_timed_out_event_attributes",
    "workflow_task_failed_event_attributes",
    "activity_task_started_event_attributes",
}


def event_shape(history: WorkflowHistory) -> list[str]:
    """The branch a history took, as tokens: commands by name, inputs received, how it closed.

    Tokens name activities, children, markers, signals and updates; the workflow-task events and
    their timing are dropped, and back-to-back repeats of a block of up to four tokens count once, so
    two changes down the same branch with 3 and 40 targets (in parallel or one by one) have one
    shape.
    """
    tokens: list[str] = []
    for event in history.events:
        attrs = event.WhichOneof("attributes")
        if attrs is None or attrs in _NOISE:
            continue
        token = attrs.removesuffix("_event_attributes")
        detail = getattr(event, attrs)
        if attrs == "activity_task_scheduled_event_attributes":
            token += f":{detail.activity_type.name}"
        elif attrs == "start_child_workflow_execution_initiated_event_attributes":
            token += f":{detail.workflow_type.name}"
        elif attrs == "marker_recorded_event_attributes":
            token += f":{detail.marker_name}"
        elif attrs == "workflow_execution_signaled_event_attributes":
            token += f":{detail.signal_name}"
        elif attrs == "workflow_execution_update_accepted_event_attributes":
            token += f":{detail.accepted_request.input.name}"
        tokens.append(token)
    return _collapse(tokens)


def _collapse(tokens: list[str], longest: int = 4) -> list[str]:
    """Back-to-back repeats of a block of up to ``longest`` tokens count as one block."""
    out = list(tokens)
    i = 0
    while i < len(out):
        for size in range(1, longest + 1):
            block = out[i : i + size]
            if len(block) < size:
                break
            repeated = False
            while out[i + size : i + 2 * size] == block:
                del out[i + size : i + 2 * size]
                repeated = True
            if repeated:
                break
        i += 1
    return out


def shape_signature(history: WorkflowHistory) -> str:
    """``<workflow type>/<12 hex>``: the type and a hash of :func:`event_shape`."""
    _, workflow_type = history_ids(history)
    digest = hashlib.sha256("\n".join(event_shape(history)).encode()).hexdigest()[:12]
    return f"{workflow_type}/{digest}"


SAVED_PREFIX = "server_"
"""File names of histories saved from a server: ``server_<12 hex>__<type>__1.json``."""


def save_new_shapes(
    histories: Iterable[WorkflowHistory], directory: Path, *, progress: Progress | None = None
) -> list[Path]:
    """Write each history whose shape ``directory`` does not hold yet; returns the new files.

    Names follow the corpus's ``<branch>__<workflow-type>__<n>.json``, the branch being
    ``server_<shape hash>``; one history per new shape is kept.
    """
    directory.mkdir(parents=True, exist_ok=True)
    known = set()
    for path in history_files([directory]):
        try:
            known.add(shape_signature(load_history(path)))
        except (OSError, ValueError, json_format.Error):
            continue
    written = []
    for history in histories:
        signature = shape_signature(history)
        if signature in known:
            continue
        known.add(signature)
        workflow_type, digest = signature.split("/")
        path = directory / f"{SAVED_PREFIX}{digest}__{workflow_type}__1.json"
        path.write_text(history.to_json() + "\n")
        written.append(path)
        if progress is not None:
            progress(f"saved {path.name} ({history.workflow_id}: a shape not in {directory})")
    return written
