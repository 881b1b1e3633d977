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

The pieces: :mod:`worker.histories` (reading histories, their shapes), :mod:`worker.replayer` (the
replayer, files and queries), :mod:`worker.server_replay` (the gate fed by the server). Every name
is re-exported here.
"""

from __future__ import annotations

from worker.histories import (
    SAVED_PREFIX,
    Progress,
    event_shape,
    history_files,
    history_ids,
    load_history,
    save_new_shapes,
    shape_signature,
)
from worker.replayer import (
    DEFAULT_LIMIT,
    DEFAULT_QUERY,
    ReplayReport,
    ReplayResult,
    build_replayer,
    first_mismatch,
    replay_files,
    replay_from_server,
    worker_plugins,
)
from worker.server_replay import (
    DEFAULT_SAMPLE,
    DEFAULT_SINCE,
    FETCH_CONCURRENCY,
    ServerReplay,
    Skipped,
    TypeCounts,
    registered_types,
    replay_server_sample,
    server_query,
)

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_QUERY",
    "DEFAULT_SAMPLE",
    "DEFAULT_SINCE",
    "FETCH_CONCURRENCY",
    "SAVED_PREFIX",
    "Progress",
    "ReplayReport",
    "ReplayResult",
    "ServerReplay",
    "Skipped",
    "TypeCounts",
    "build_replayer",
    "event_shape",
    "first_mismatch",
    "history_files",
    "history_ids",
    "load_history",
    "registered_types",
    "replay_files",
    "replay_from_server",
    "replay_server_sample",
    "save_new_shapes",
    "server_query",
    "shape_signature",
    "worker_plugins",
]
