"""Replay recorded histories against the current workflow code, set up exactly like the worker.

A mismatch is non-determinism: deployed, that code would fail the workflow tasks of every running
workflow with such a history (``docs/versioning.md``). The pieces, every name re-exported here:

- :mod:`worker.histories`: JSON history files (``WorkflowHistory.to_json``, ``temporal workflow
  show -o json``) and the branch each took (:func:`event_shape`, :func:`save_new_shapes`);
- :mod:`worker.replayer`: the replayer built from :mod:`worker.registry`, the data converter and
  the client's worker plug-ins; files and visibility queries, one :class:`ReplayResult` each;
- :mod:`worker.server_replay`: :func:`replay_server_sample`, the replay gate fed by the live
  server (``changeguard replay --from-server``), counted per workflow type.
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
