"""The short chaos campaign (about 30 changes, every fault type at least once) and its checker.

The long campaign is ``make chaos``; see ``tests/chaos/campaign.py`` and docs/chaos.md. Set
``CHANGEGUARD_CHAOS_SEED`` to replay a run whose seed a failure printed.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.chaos.campaign import FAULTS, SHORT, Campaign, make_schedule
from tests.chaos.invariants import ChangeTrace, Run, check, recovery_seconds, recovery_times
from workflows.models import AuditAction, AuditRecord

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.integration
@pytest.mark.timeout(420)
async def test_short_campaign_keeps_every_invariant(tmp_path: Path) -> None:
    """30 changes of every shape under every fault type: no violation, no lost change."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    seed = int(os.environ.get("CHANGEGUARD_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    result = await Campaign(seed=seed, size=SHORT, workdir=tmp_path).run()
    print(result.summary())
    assert set(result.faults) == set(FAULTS), result.summary()
    assert result.findings.counts == dict.fromkeys(result.findings.counts, 0), result.summary()


def test_a_seed_replays_the_same_schedule() -> None:
    """The schedule is a function of the seed: a printed seed replays the same faults."""
    first = make_schedule(random.Random(7), SHORT, horizon=90)
    assert first == make_schedule(random.Random(7), SHORT, horizon=90)
    assert {f.kind for f in first} == set(FAULTS)
    assert first != make_schedule(random.Random(8), SHORT, horizon=90)


# ---------------------------------------------------------------- the checker on made-up data


def _record(action: AuditAction, at: datetime, **fields: object) -> AuditRecord:
    return AuditRecord.model_validate(
        {
            "record_id": f"{action.value}-{at.timestamp()}-{fields.get('report_hash', '')}",
            "action": action,
            "actor": fields.pop("actor", "changeguard"),
            "at": at,
            "change_id": "c1",
            **fields,
        }
    )


def _deploy(seq: int, step: str, host: str, at: datetime) -> dict[str, object]:
    return {
        "seq": seq,
        "idempotency_key": f"c1:{step}:{host}",
        "host": host,
        "from_version": "1",
        "to_version": "2",
        "at": at.isoformat(),
    }


def _story(outcome: str, gate: str = "proceed") -> list[AuditRecord]:
    return [
        _record(AuditAction.STARTED, NOW),
        _record(
            AuditAction.GATE,
            NOW + timedelta(seconds=1),
            report_hash="r1",
            detail={"decision": gate},
        ),
        _record(AuditAction.OUTCOME, NOW + timedelta(seconds=30), detail={"outcome": outcome}),
    ]


def _effects(*keys: str) -> list[AuditRecord]:
    return [
        _record(AuditAction.MUTATION, NOW + timedelta(seconds=2 + i), detail={"idempotency_key": k})
        for i, k in enumerate(keys)
    ]


def test_checker_counts_a_mutation_after_a_block_without_approval_as_i1() -> None:
    """A deploy after a gate that blocked, with no approval of its report, is an I1 violation."""
    trace = ChangeTrace("c1", "approve", ["h1"], ["1", "100%"], started=True)
    deploys = [_deploy(1, "apply", "h1", NOW + timedelta(seconds=5))]
    records = _story("completed", gate="block") + _effects("c1:apply:h1")
    assert check([trace], deploys, records, []).counts["I1"] == 1
    approved = [_record(AuditAction.APPROVAL, NOW + timedelta(seconds=3), report_hash="r1")]
    assert check([trace], deploys, records + approved, []).counts["I1"] == 0


def test_checker_counts_an_unreverted_target_of_a_rollback_and_reverse_order_as_i3() -> None:
    """Rolled back with a target left applied, or reverted wave 1 before wave 2: I3."""
    trace = ChangeTrace("c1", "bad", ["h1", "h2"], ["1", "100%"], started=True)
    later = NOW + timedelta(seconds=5)
    applies = [_deploy(1, "apply", "h1", later), _deploy(2, "apply", "h2", later)]
    keys = ["c1:apply:h1", "c1:apply:h2", "c1:revert:h1", "c1:revert:h2"]
    records = _story("rolled_back") + _effects(*keys)
    left = [*applies, _deploy(3, "revert", "h2", later)]
    assert check([trace], left, records, []).violations["I3"] == [
        "c1 ended rolled_back with ['h1'] applied and not reverted"
    ]
    wrong = [*applies, _deploy(3, "revert", "h1", later), _deploy(4, "revert", "h2", later)]
    assert len(check([trace], wrong, records, []).violations["I3"]) == 1
    right = [*applies, _deploy(3, "revert", "h2", later), _deploy(4, "revert", "h1", later)]
    assert check([trace], right, records, []).total == 0


def test_checker_counts_unaudited_actions_and_effects_as_i6() -> None:
    """An accepted abort with no record, and an effect with no ledger record: two I6."""
    trace = ChangeTrace("c1", "abort", ["h1"], ["1", "100%"], started=True, actions=["abort"])
    deploys = [_deploy(1, "apply", "h1", NOW + timedelta(seconds=5))]
    found = check([trace], deploys, _story("completed"), [])
    assert found.counts["I6"] == 2


def test_checker_counts_a_change_without_outcome_as_lost() -> None:
    """A started change with no outcome record and no closed run is lost."""
    trace = ChangeTrace("c1", "good", ["h1"], ["1", "100%"], started=True)
    found = check([trace], [], _story("completed")[:2], [])
    assert found.counts["lost"] == 1


def _run(events: list[datetime], *, close: datetime | None = None) -> Run:
    return Run(
        workflow_id="c1",
        run_id="r1",
        open=close is None,
        start=NOW,
        close=close,
        event_times=events,
        waits_until=[None] * len(events),
        task_failures=[],
        longest_failure_streak=0,
    )


def test_recovery_counts_the_time_outside_later_faults() -> None:
    """A change that moves only after the next fault is charged for the time no fault ran."""
    at = [NOW + timedelta(seconds=s) for s in range(100)]
    faults = [("fleet_5xx@10s", at[10], at[20]), ("worker_kill@25s", at[25], at[30])]
    # Stuck from the 5xx's end (t=20) until t=40: 20 s, of which 5 s inside the worker kill.
    run = _run([at[1], at[40]])
    assert recovery_times(faults, [run]) == {
        "fleet_5xx@10s": (15.0, "c1"),
        "worker_kill@25s": (10.0, "c1"),
    }
    assert recovery_seconds(faults, [run]) == (15.0, "c1 after fleet_5xx@10s")
    # A change that closed before a fault ended is not affected by it.
    assert recovery_seconds(faults, [_run([at[1], at[5]], close=at[5])]) == (0.0, "")


def test_checker_takes_a_refused_start_as_recorded_and_counts_a_running_change_once() -> None:
    """A start refused at the edge has ``refused``, not ``started``; a running change is lost only."""
    trace = ChangeTrace("c1", "refuse", ["h1"], ["1", "100%"], started=True)
    refused = [
        _record(AuditAction.REFUSED, NOW),
        _record(AuditAction.OUTCOME, NOW + timedelta(seconds=1), detail={"outcome": "rejected"}),
    ]
    closed = _run([NOW], close=NOW + timedelta(seconds=1))
    assert check([trace], [], refused, [closed]).total == 0
    running = check([trace], [], _story("completed")[:2], [_run([NOW])])
    assert (running.counts["I6"], running.counts["lost"]) == (0, 1)
