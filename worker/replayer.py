"""Replay histories against the current workflow code, with a replayer set up like the worker.

A replay feeds a recorded history to today's workflow code and checks that the code issues the same
commands in the same order. A mismatch is non-determinism: deployed, that code would fail the
workflow tasks of every running workflow with such a history (see ``docs/versioning.md``).

The replayer takes its workflows and interceptors from :mod:`worker.registry`, the pydantic data
converter, and the worker-side half of the client's plug-ins (:func:`worker.telemetry.client_plugins`:
the OpenTelemetry plug-in adds its workflow interceptor and the ``opentelemetry`` sandbox
pass-through), just as a :class:`temporalio.worker.Worker` built on our client receives them.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import temporalio.worker
from google.protobuf import json_format
from temporalio.client import Client, WorkflowHistory
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from worker import registry, sdk_shims
from worker.converter import data_converter
from worker.histories import Progress, history_files, history_ids, load_history
from worker.telemetry import client_plugins
from workflows import names

DEFAULT_QUERY = (
    f"WorkflowType = '{names.GUARDED_CHANGE}' OR WorkflowType = '{names.GUARDRAIL_GATE}'"
)
"""The server histories ``changeguard replay --query`` checks when given no query."""
DEFAULT_LIMIT = 50

Loaded = list[tuple[int, str, WorkflowHistory]]
"""Histories to replay: each with its place in the answer and its source (a file, ``server``)."""


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
    sdk_shims.install()  # as every worker does: a replay decodes the same payloads
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
    loaded: Loaded = []
    for i, path in enumerate(history_files(paths)):
        try:
            loaded.append((i, str(path), load_history(path)))
        except (OSError, ValueError, json_format.Error) as exc:
            error = f"cannot read history: {exc}"
            results[i] = ReplayResult(str(path), path.stem, "", "", ok=False, error=error)
    for i, result in await replay_loaded(loaded, workflows):
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
    loaded: Loaded = []
    i = 0
    async for execution in client.list_workflows(query or DEFAULT_QUERY, limit=limit):
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        loaded.append((i, "server", await handle.fetch_history()))
        i += 1
    results = [r for _, r in await replay_loaded(loaded, workflows)]
    return ReplayReport(results, time.monotonic() - started)


async def replay_loaded(
    loaded: Loaded, workflows: Sequence[type] | None, progress: Progress | None = None
) -> list[tuple[int, ReplayResult]]:
    """Replay loaded histories in one replayer; each result with its place, in input order."""
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
