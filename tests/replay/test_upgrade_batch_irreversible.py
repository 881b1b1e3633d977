"""Irreversible steps reported by batches change what the parent does: behind a patch, proved."""

from __future__ import annotations

from pathlib import Path

from tests.replay.test_replay import _with
from tests.replay.upgrade.batch_irreversible import UnpatchedBatchGuardedChange
from worker.replay import replay_files

BEFORE = Path(__file__).resolve().parent / "upgrade" / "before_batch_irreversible"


async def test_todays_code_replays_a_history_whose_parent_ignored_the_batch_report() -> None:
    """New batches, old parent (it unwound): today's patched parent takes the old path on replay."""
    report = await replay_files([BEFORE])
    assert [(r.workflow_type, r.ok) for r in report.results] == [("GuardedChange", True)]


async def test_without_the_patch_that_history_would_not_replay() -> None:
    """Acting on the report unconditionally would hold where the history unwound: nondeterminism."""
    report = await replay_files([BEFORE], workflows=_with(UnpatchedBatchGuardedChange))
    assert [(r.ok, r.nondeterministic) for r in report.results] == [(False, True)]
