"""``changeguard replay --from-server``: the replay gate fed by a live server's recent histories.

The module runs real changes on a dev server of its own (so the listing holds exactly them), then
replays the server's histories through the command: exit 0 against this code, 1 against the
deliberately broken workflow (naming the first differing command), 2 on an empty server.
"""

from __future__ import annotations

import argparse
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities
from cli import replay as cli_replay
from tests import fakes
from tests.fakes import Ledger, RecordingKind
from tests.helpers import OPEN_BUNDLE, start_dev_server, until_phase
from tests.replay import capture
from tests.replay.broken_workflow import BrokenGuardedChangeWorkflow
from worker import registry
from worker.main import build_worker
from worker.replay import SAVED_PREFIX, history_files, load_history, shape_signature
from worker.settings import Settings
from workflows.models import ChangeRequest, ChangeResult, Outcome, Phase

pytestmark = pytest.mark.integration

FIRST_MISMATCH = (
    "Activity type of scheduled event 'validate_change' does not match activity type of activity "
    "command 'describe_target'"
)


async def _server() -> WorkflowEnvironment:
    return await start_dev_server()


def _settings(client: Client) -> Settings:
    return Settings.from_env(env={"TEMPORAL_ADDRESS": client.service_client.config.target_host})


def _request(change_id: str, rules: list[dict[str, Any]], targets: int = 1) -> ChangeRequest:
    return ChangeRequest.model_validate(
        {
            "change_id": change_id,
            "kind": "recording",
            "summary": "replay gate",
            "requester": "alice",
            "team": "payments",
            "environment": "prod",
            "targets": [{"id": f"{change_id}.t{i}"} for i in range(1, targets + 1)],
            "rollout": {"waves": ["100%"], "bake": "0s"},
            "policy": {"guardrails": rules},
        }
    )


WAITS = [
    {"use": "fake-state", "params": {"outcome": "fail"}, "opt_out": {"approvers": ["sre-leads"]}}
]


@pytest.fixture(scope="module")
async def populated(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    """A server with finished changes (one holding a target lock) and one still awaiting approval."""
    RecordingKind.ledger = Ledger()
    env = await _server()
    state = tmp_path_factory.mktemp("gate")
    (state / "operators.yaml").write_text("operators: {}\n")
    from activities.audit import SqliteAuditStore

    audit = AuditActivities(
        SqliteAuditStore(state / "audit.db"), f"yaml:{state / 'operators.yaml'}"
    )
    queue = f"gate-{uuid.uuid4().hex[:8]}"
    client = env.client
    async with build_worker(
        client,
        task_queue=queue,
        guardrails=capture.guardrails(),
        kinds=fakes.kinds(),
        bundle=OPEN_BUNDLE,
        audit=audit,
    ):
        for change_id, rules, targets in (
            ("gate-a", [{"use": "always-pass"}], 1),
            ("gate-b", [{"use": "always-pass"}], 3),  # the same branch: one shape with gate-a
            ("gate-lock", capture.lock_rules("30s"), 1),
        ):
            result = await client.execute_workflow(
                "GuardedChange",
                _request(change_id, rules, targets),
                id=change_id,
                task_queue=queue,
                result_type=ChangeResult,
            )
            assert result.outcome is Outcome.COMPLETED, change_id
        handle = await client.start_workflow(
            "GuardedChange", _request("gate-waiting", WAITS), id="gate-waiting", task_queue=queue
        )
        await until_phase(handle, Phase.AWAITING_APPROVAL)
    yield client
    await env.shutdown()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="changeguard")
    cli_replay.add_parsers(p.add_subparsers(dest="command", required=True))
    return p


async def _run(settings: Settings, *argv: str) -> int:
    args = _parser().parse_args(argv)
    code: int = await args.run(args, settings)
    return code


async def test_empty_server_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """A server with no history of any workflow type: exit 2, never a vacuous pass."""
    env = await _server()
    try:
        assert await _run(_settings(env.client), "replay", "--from-server") == 2
    finally:
        await env.shutdown()
    assert "refusing to pass on an empty corpus" in capsys.readouterr().err


async def test_server_histories_replay_per_type(
    populated: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every workflow type's recent runs (the waiting change too) replay: exit 0, counts per type."""
    code = await _run(_settings(populated), "replay", "--from-server", "--json")
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {name: (c["replayed"], c["failed"]) for name, c in doc["by_type"].items()} == {
        "ChangeEvents": (0, 0),  # no change-event sink on this worker: none ran
        "GuardedChange": (4, 0),
        "GuardrailGate": (4, 0),
        "TargetBatch": (0, 0),
        "TargetLock": (1, 0),
    }
    assert "gate-waiting" in {r["workflow_id"] for r in doc["results"]}


async def test_progress_and_summary_lines(
    populated: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --json: progress on stderr, one line per type and a summary on stdout."""
    assert await _run(_settings(populated), "replay", "--from-server", "--sample", "2") == 0
    out, err = capsys.readouterr()
    assert "GuardedChange: 2 runs listed" in err and "replayed 5/5 (0 failed)" in err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["GuardedChange", "replayed", "2"]
    assert lines[-1].startswith("5 histories replayed in ")


async def test_broken_workflow_fails_naming_the_first_differing_command(
    populated: Client, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against an unpatched new step every GuardedChange fails (exit 1), naming the command."""
    broken = [BrokenGuardedChangeWorkflow, *registry.WORKFLOWS[1:]]
    assert registry.WORKFLOWS[0].__name__ == "GuardedChangeWorkflow"
    monkeypatch.setattr(registry, "WORKFLOWS", broken)
    assert await _run(_settings(populated), "replay", "--from-server", "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["by_type"]["GuardedChange"] == {"replayed": 4, "skipped": 0, "failed": 4}
    assert doc["by_type"]["GuardrailGate"]["failed"] == 0
    mismatches = {r["mismatch"] for r in doc["results"] if not r["ok"]}
    assert mismatches == {FIRST_MISMATCH}


async def test_save_adds_only_new_shapes(
    populated: Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--save writes one history per shape the corpus lacks, named as the corpus names them."""
    settings = _settings(populated)
    assert await _run(settings, "replay", "--from-server", "--save", str(tmp_path)) == 0
    saved = history_files([tmp_path])
    shapes = {shape_signature(load_history(p)) for p in saved}
    assert len(shapes) == len(saved)
    assert all(p.name.startswith(SAVED_PREFIX) and p.name.endswith("__1.json") for p in saved)
    assert {p.stem.split("__")[1] for p in saved} == {
        "GuardedChange",
        "GuardrailGate",
        "TargetLock",
    }
    # gate-a and gate-b (3 targets) took one branch of GuardedChange; gate-lock another (it gives
    # its lock back at the end, a change no lock check gated does not); gate-waiting a third.
    assert len([p for p in saved if "__GuardedChange__" in p.name]) == 3
    capsys.readouterr()
    assert await _run(settings, "replay", "--from-server", "--save", str(tmp_path)) == 0
    assert history_files([tmp_path]) == saved  # nothing new the second time
    assert "saved" not in capsys.readouterr().out.splitlines()[-1]
