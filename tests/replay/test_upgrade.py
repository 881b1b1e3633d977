"""The worked upgrade (docs/versioning.md): patch, deprecate, remove, each proved on real histories.

``upgrade/before_plan/`` holds GuardedChange histories recorded before the wave plan's ledger record
existed (step 0); the committed corpus (``histories/``) was recorded by today's code (step 1, the
new step behind ``workflow.patched``).
"""

from __future__ import annotations

from pathlib import Path

from tests.replay.test_replay import HISTORIES, _with
from tests.replay.upgrade.workflows import BeforePlanGuardedChange, DeprecatedPlanGuardedChange
from worker.replay import replay_files

BEFORE = Path(__file__).resolve().parent / "upgrade" / "before_plan"


async def test_step_1_patched_replays_histories_from_before_the_change() -> None:
    """Today's code (patched) replays step-0 histories: they take the old path, no plan record."""
    report = await replay_files([BEFORE])
    assert len(report.results) == 4
    assert [r for r in report.results if not r.ok] == []


async def test_the_change_without_a_patch_would_break_the_running_changes() -> None:
    """Step 0 code cannot replay step-1 histories that wrote the plan: why the patch is needed."""
    report = await replay_files([HISTORIES], workflows=_with(BeforePlanGuardedChange))
    planned = [r for r in report.results if r.workflow_type == "GuardedChange" and not r.ok]
    assert planned and all(r.nondeterministic for r in planned)
    assert {r.workflow_id.split(".")[0] for r in planned} >= {"proceed", "large_wave_batches"}


async def test_step_2_deprecated_replays_the_new_histories_and_refuses_the_old() -> None:
    """deprecate_patch replays every step-1 history, and no longer a step-0 one that ran waves."""
    new = await replay_files([HISTORIES], workflows=_with(DeprecatedPlanGuardedChange))
    assert [r for r in new.results if not r.ok] == []
    old = await replay_files([BEFORE], workflows=_with(DeprecatedPlanGuardedChange))
    assert old.results and all(not r.ok and r.nondeterministic for r in old.results)
