"""Modules split by concern (issue 17) keep every public name they held, as the same object."""

from __future__ import annotations

import importlib

import pytest

HELD = {
    "activities.audit_store": {
        "activities.audit_base": [
            "DEFAULT_AUDIT_URL",
            "STARTED",
            "TABLE",
            "AuditEntry",
            "AuditRecordInvalid",
            "AuditStore",
            "AuditStoreError",
            "AuditUrlError",
            "Entries",
            "Records",
        ],
        "activities.audit_sqlite": ["SqliteAuditStore"],
        "activities.audit_postgres": ["SCHEMA_FILE", "PostgresAuditStore", "postgres_schema"],
        "activities.audit_store": ["open_audit_store", "opened"],
    },
    "activities.resilience": {
        "activities.backoff": [
            "current_attempt",
            "jittered_delay",
            "raise_retryable",
            "retryable_error",
        ],
        "activities.breakers": [
            "FIRST_COOL_DOWN",
            "PROBE_POLL",
            "PROBE_WAIT",
            "CircuitBreaker",
            "CircuitBreakers",
            "breakers",
            "counts_as_failure",
        ],
        "activities.heartbeat": ["Heartbeat"],
    },
    "worker.replay": {
        "worker.histories": [
            "SAVED_PREFIX",
            "Progress",
            "event_shape",
            "history_files",
            "history_ids",
            "load_history",
            "save_new_shapes",
            "shape_signature",
        ],
        "worker.replayer": [
            "DEFAULT_LIMIT",
            "DEFAULT_QUERY",
            "ReplayReport",
            "ReplayResult",
            "build_replayer",
            "first_mismatch",
            "replay_files",
            "replay_from_server",
            "worker_plugins",
        ],
        "worker.server_replay": [
            "DEFAULT_SAMPLE",
            "DEFAULT_SINCE",
            "FETCH_CONCURRENCY",
            "ServerReplay",
            "Skipped",
            "TypeCounts",
            "registered_types",
            "replay_server_sample",
            "server_query",
        ],
    },
    "cli.main": {
        "cli.changes": [
            "POLL_INTERVAL",
            "cmd_checks",
            "cmd_start",
            "cmd_status",
            "follow",
            "pending_work",
            "start_change",
        ],
        "cli.actions": ["cmd_approve", "cmd_operator", "cmd_recheck"],
        "cli.servers": ["cmd_demo", "cmd_dev", "cmd_worker", "with_versioning"],
        "cli.main": ["entry", "main", "parser"],
    },
}
"""Per split module: where each public name it held before the split lives now."""

CASES = [
    (old, home, name)
    for old, homes in HELD.items()
    for home, names in homes.items()
    for name in names
]


@pytest.mark.parametrize(("old", "home", "name"), CASES, ids=[f"{o}.{n}" for o, _, n in CASES])
def test_a_split_module_still_holds_each_name_it_held(old: str, home: str, name: str) -> None:
    """``from <old module> import <name>`` gives the object its new home defines."""
    assert getattr(importlib.import_module(old), name) is getattr(
        importlib.import_module(home), name
    )


@pytest.mark.parametrize("old", sorted(HELD))
def test_a_split_module_lists_exactly_the_names_it_held(old: str) -> None:
    """``__all__`` of a split module is the names it held (a star import gets each, no more)."""
    held = {name for names in HELD[old].values() for name in names}
    assert set(importlib.import_module(old).__all__) == held
