"""Workflow histories on disk: reading them, and the branch each one took (its shape).

Histories come from JSON files (``WorkflowHistory.to_json``, ``temporal workflow show -o json``).
:func:`event_shape` reduces a history to the branch it took, so a history fetched from a server is
saved into the committed corpus only when it adds branch coverage (:func:`save_new_shapes`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from google.protobuf import json_format
from temporalio.client import WorkflowHistory

Progress = Callable[[str], None]
"""Receives one line of progress at a time (the CLI prints them on stderr)."""


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
