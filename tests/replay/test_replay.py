"""Replay: every committed history replays; a broken workflow does not; the CLI reports both.

The corpus must also cover the branches: each branch docs/versioning.md names has a committed
history, and each branch tests/replay/capture.py drives is named there.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.testing import WorkflowEnvironment

from cli import replay as cli_replay
from tests import fakes
from tests.replay.broken_workflow import BrokenGuardedChangeWorkflow, PatchedGuardedChangeWorkflow
from worker import registry
from worker.main import build_worker
from worker.replay import (
    SAVED_PREFIX,
    ReplayReport,
    first_mismatch,
    history_files,
    history_ids,
    load_history,
    replay_files,
)
from worker.settings import Settings
from workflows.models import ChangeRequest, ChangeResult, Outcome

HISTORIES = Path(__file__).resolve().parent / "histories"
VERSIONING_DOC = Path(__file__).resolve().parents[2] / "docs" / "versioning.md"
BRANCH_SECTION = "## Branches the committed corpus covers"
"""The heading of the table in docs/versioning.md whose rows start with `` | `branch` | ``."""
FILES = history_files([HISTORIES])
PROCEED = HISTORIES / "proceed__GuardedChange__1.json"
FIRST_MISMATCH = (
    "Activity type of scheduled event 'validate_change' does not match activity type of activity "
    "command 'describe_target'"
)


def _type_name(cls: type) -> str:
    # The SDK keeps a workflow's definition on the class; there is no public accessor.
    name = workflow._Definition.must_from_class(cls).name
    assert name is not None, f"{cls.__name__} is a dynamic workflow"
    return name


def _with(*replacements: type) -> list[type]:
    """The registry's workflows, with those of the same workflow type replaced."""
    names = {_type_name(r) for r in replacements}
    return [*replacements, *(w for w in registry.WORKFLOWS if _type_name(w) not in names)]


@pytest.fixture(scope="module")
async def committed() -> ReplayReport:
    """All committed histories, replayed once against the current code."""
    return await replay_files([HISTORIES])


# ------------------------------------------------------------------ the committed histories


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_committed_history_replays(committed: ReplayReport, path: Path) -> None:
    """Today's workflow code replays this recorded history (a failure names the command)."""
    [result] = [r for r in committed.results if r.source == str(path)]
    assert result.ok, f"{path.name} ({result.workflow_id}): {result.mismatch or result.error}"


def test_every_workflow_type_has_a_committed_history() -> None:
    """Each workflow type the worker registers has at least one committed history."""
    recorded = {history_ids(load_history(p))[1] for p in FILES}
    missing = sorted(_type_name(w) for w in registry.WORKFLOWS if _type_name(w) not in recorded)
    assert missing == [], (
        f"no committed history of workflow type(s) {missing}: add a branch to "
        "tests/replay/capture.py and run 'make histories'"
    )


def test_histories_name_their_workflow() -> None:
    """Each file is named <branch>__<type>__<n> after the history's own type and workflow id.

    Histories saved from a server (``replay --from-server --save``) are named after their shape,
    ``server_<hash>``: their workflow ids are whatever production used.
    """
    for path in FILES:
        workflow_id, workflow_type = history_ids(load_history(path))
        branch, type_in_name, _ = path.stem.split("__")
        assert type_in_name == workflow_type, path.name
        if not branch.startswith(SAVED_PREFIX):
            assert workflow_id.removeprefix("lock/").startswith(f"{branch}."), path.name


def documented_branches(text: str | None = None) -> list[str]:
    """The branch names of the table under :data:`BRANCH_SECTION` in docs/versioning.md."""
    text = VERSIONING_DOC.read_text() if text is None else text
    assert BRANCH_SECTION in text, f"docs/versioning.md lost its heading {BRANCH_SECTION!r}"
    section = text.split(BRANCH_SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\|\s*`([a-z0-9_]+)`\s*\|", section, flags=re.MULTILINE)


def committed_branches() -> set[str]:
    """The branch part of every committed history's file name."""
    return {p.name.split("__", 1)[0] for p in FILES}


def test_every_documented_branch_has_a_committed_history() -> None:
    """A branch docs/versioning.md names without a committed history fails the suite."""
    documented = documented_branches()
    assert len(documented) == len(set(documented)), "a branch is listed twice"
    missing = sorted(set(documented) - committed_branches())
    assert missing == [], (
        f"docs/versioning.md names branch(es) {missing} with no history in tests/replay/histories: "
        "capture them (python -m tests.replay.capture --only NAME) or take them out of the doc"
    )


def test_every_captured_branch_is_documented() -> None:
    """A branch tests/replay/capture.py drives but docs/versioning.md does not name fails."""
    from tests.replay.capture import BRANCHES

    undocumented = sorted({b.name for b in BRANCHES} - set(documented_branches()))
    assert undocumented == [], (
        f"capture.py drives branch(es) {undocumented} that docs/versioning.md does not list "
        f"under {BRANCH_SECTION!r}: add a row saying what each covers"
    )


def test_branch_table_parsing() -> None:
    """The doc's table is read by its rows' first cell, and only under its heading."""
    text = (
        "| `not_this` | elsewhere |\n"
        f"{BRANCH_SECTION}\n\n| Branch | Covers |\n|---|---|\n"
        "| `proceed` | gates pass |\n| `lock_expired` | the lease ends |\n\n"
        "## Next\n| `nor_this` | x |\n"
    )
    assert documented_branches(text) == ["proceed", "lock_expired"]


# ------------------------------------------------------------------ the harness is live


async def test_unpatched_new_step_fails_replay() -> None:
    """A new step added without workflow.patched fails every GuardedChange history, naming it."""
    report = await replay_files([HISTORIES], workflows=_with(BrokenGuardedChangeWorkflow))
    # A start refused before validation never reaches the new step: it replays either way.
    refused = [r for r in report.results if r.workflow_id.startswith("refused_start.")]
    changes = [r for r in report.results if r.workflow_type == "GuardedChange" and r not in refused]
    others = [r for r in report.results if r.workflow_type != "GuardedChange"]
    assert changes and others and refused and all(r.ok for r in refused)
    assert {(r.ok, r.nondeterministic, r.mismatch) for r in changes} == {
        (False, True, FIRST_MISMATCH)
    }
    assert all(r.ok for r in others)


async def test_same_step_behind_patched_replays() -> None:
    """The same step behind workflow.patched (docs/versioning.md) replays every history."""
    report = await replay_files([HISTORIES], workflows=_with(PatchedGuardedChangeWorkflow))
    assert [r for r in report.results if not r.ok] == []


async def test_tampered_history_fails(tmp_path: Path) -> None:
    """A history whose recorded command differs from the code's is reported, not raised."""
    path = _tampered(tmp_path)
    [result] = (await replay_files([path])).results
    assert (result.ok, result.nondeterministic, result.workflow_id) == (False, True, "proceed.a")
    assert "'validate_change_v0' does not match" in result.mismatch


async def test_unreadable_file_is_a_failed_result(tmp_path: Path) -> None:
    """A file that is not a history is a failed result naming the file; the others still run."""
    (tmp_path / "junk.json").write_text('{"events": []}')
    shutil.copy(PROCEED, tmp_path / PROCEED.name)
    report = await replay_files([tmp_path])
    assert [(Path(r.source).name, r.ok) for r in report.results] == [
        ("junk.json", False),
        (PROCEED.name, True),
    ]
    assert "not a workflow history" in report.results[0].error


def test_first_mismatch_from_core_failure_text() -> None:
    """The mismatching command is pulled out of the core's Failure debug text."""
    text = (
        "Workflow activation completion failed: Failure { failure: Some(Failure { message: "
        '"[TMPRL1100] Nondeterminism error: No command scheduled for event HistoryEvent(id: 5, '
        'TimerStarted)", source: "", stack_trace: "" }), force_cause: NonDeterministicError }'
    )
    assert (
        first_mismatch(text) == "No command scheduled for event HistoryEvent(id: 5, TimerStarted)"
    )
    assert first_mismatch("something else entirely") == ""


def _tampered(tmp_path: Path) -> Path:
    """A copy of the proceed history whose first activity was recorded under another name."""
    doc = json.loads(PROCEED.read_text())
    for event in doc["events"]:
        attrs = event.get("activityTaskScheduledEventAttributes")
        if attrs:
            attrs["activityType"]["name"] += "_v0"
            break
    path = tmp_path / "tampered__GuardedChange__1.json"
    path.write_text(json.dumps(doc))
    return path


# ------------------------------------------------------------------ the command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="changeguard")
    cli_replay.add_parsers(p.add_subparsers(dest="command", required=True))
    return p


async def _run(settings: Settings, *argv: str) -> int:
    args = _parser().parse_args(argv)
    code: int = await args.run(args, settings)
    return code


async def test_cli_replays_the_committed_histories(capsys: pytest.CaptureFixture[str]) -> None:
    """'replay --dir' prints one line per history and a summary, and exits 0."""
    code = await _run(Settings.from_env(env={}), "replay", "--dir", str(HISTORIES))
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(out) == len(FILES) + 1
    assert all(line.startswith("ok") for line in out[:-1])
    assert out[-1].startswith(f"{len(FILES)} histories replayed in ")
    assert out[-1].endswith(f"{len(FILES)} ok, 0 failed")


async def test_cli_names_file_workflow_and_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A history that does not replay: exit 1, naming the file, workflow id and the command."""
    path = _tampered(tmp_path)
    code = await _run(Settings.from_env(env={}), "replay", "--dir", str(tmp_path))
    [line, summary] = capsys.readouterr().out.splitlines()
    assert code == 1
    assert line.startswith("FAIL")
    assert "proceed.a" in line and str(path) in line
    assert "non-determinism: Activity type of scheduled event 'validate_change_v0'" in line
    assert summary.endswith("0 ok, 1 failed")


async def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """'--json' prints one document with a result per history."""
    _tampered(tmp_path)
    shutil.copy(PROCEED, tmp_path / PROCEED.name)
    code = await _run(Settings.from_env(env={}), "replay", "--dir", str(tmp_path), "--json")
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (doc["ok"], doc["replayed"], doc["failed"]) == (False, 2, 1)
    assert [(r["workflow_id"], r["ok"]) for r in doc["results"]] == [
        ("proceed.a", True),
        ("proceed.a", False),
    ]


async def test_cli_nothing_to_replay_is_invalid(tmp_path: Path) -> None:
    """An empty directory is invalid input (exit 2), never a silent pass."""
    assert await _run(Settings.from_env(env={}), "replay", "--dir", str(tmp_path)) == 2


async def test_cli_unreachable_server_exits_4(unreachable: Settings) -> None:
    """'replay --query' and 'history export' exit 4 when Temporal cannot be reached."""
    assert await _run(unreachable, "replay", "--query") == 4
    assert await _run(unreachable, "history", "export", "some-change") == 4


@pytest.fixture
def unreachable() -> Settings:
    return Settings.from_env(env={"TEMPORAL_ADDRESS": "127.0.0.1:1"})


@pytest.mark.integration
async def test_export_then_replay_from_file_and_server(
    dev_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run on the dev server exports as replayable JSON and replays from the server too."""
    settings = Settings.from_env(
        env={"TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host}
    )
    change_id = f"replay-{uuid.uuid4().hex[:8]}"
    request = _request(change_id)
    async with build_worker(
        dev_env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        result = await dev_env.client.execute_workflow(
            "GuardedChange", request, id=change_id, task_queue=task_queue, result_type=ChangeResult
        )
    assert result.outcome is Outcome.COMPLETED
    out = tmp_path / "exported" / f"{change_id}.json"

    assert await _run(settings, "history", "export", change_id, "--out", str(out)) == 0
    capsys.readouterr()  # the dev server's banner, if it started in this test
    assert await _run(settings, "history", "export", f"{change_id}/gate-1") == 0
    gate_json = capsys.readouterr().out
    (out.parent / "gate.json").write_text(gate_json)
    report = await replay_files([out.parent])
    assert [(r.workflow_id, r.workflow_type, r.ok) for r in report.results] == [
        (f"{change_id}/gate-1", "GuardrailGate", True),
        (change_id, "GuardedChange", True),
    ]

    query = f"WorkflowId STARTS_WITH '{change_id}'"
    assert await _run(settings, "replay", "--query", query) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].endswith("2 ok, 0 failed")
    assert await _run(settings, "history", "export", "no-such-change") == 2
    assert await _run(settings, "replay", "--query", "WorkflowId = 'no-such-change'") == 2


def _request(change_id: str) -> ChangeRequest:
    data: dict[str, Any] = {
        "change_id": change_id,
        "kind": "recording",
        "summary": "export me",
        "requester": "alice",
        "team": "payments",
        "environment": "prod",
        "targets": [{"id": "e1"}],
        "policy": {"guardrails": [{"use": "always-pass"}]},
    }
    return ChangeRequest.model_validate(data)
