"""The Web UI's one-liners: the start's static summary and every command's summary."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from tests import fakes
from tests.builders import change_request, target_list
from tests.fakes import Ledger, RecordingKind, Switch
from worker.converter import data_converter
from worker.main import build_worker
from workflows.models import (
    ChangeRequest,
    ChangeResult,
    CheckResult,
    CheckStatus,
    Decision,
    GuardrailReport,
    Outcome,
)
from workflows.summaries import (
    STATIC_SUMMARY_MAX_BYTES,
    apply_summary,
    static_details,
    static_summary,
    window_wait_summary,
)


def _request(targets: int = 3, summary: str = "Roll out 1.4.2") -> ChangeRequest:
    return change_request(
        summary=summary,
        targets=target_list(targets, "web-{:02d}"),
        policy={"guardrails": [{"use": "switch"}]},
    )


def test_static_summary_names_kind_what_targets_environment_team_requester() -> None:
    """The header line says what, how many targets, where, whose, and who asked."""
    assert static_summary(_request()) == (
        "recording: Roll out 1.4.2 · 3 targets · prod · team payments · by alice"
    )


def test_static_summary_stays_within_200_bytes_and_keeps_the_tail() -> None:
    """A 500-character summary is cut, never the target count, environment, team or requester."""
    text = static_summary(_request(summary="é" * 500))
    assert len(text.encode()) <= STATIC_SUMMARY_MAX_BYTES
    assert text.endswith("· 3 targets · prod · team payments · by alice")


def test_static_details_lists_targets_and_actions() -> None:
    """The details list the targets (first ten, then a count) and the operator actions."""
    details = static_details(_request(targets=12), "chg-1")
    assert "`web-01`" in details and "and 2 more" in details and "`approve`" in details


def test_verbs_and_window_waits_read_as_an_operator_would() -> None:
    """``deploy web-03``; a window wait in the rule's own time zone."""
    assert apply_summary("http-deploy", "web-03") == "deploy web-03"
    until = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)  # a Monday, 09:00 in Berlin
    check = CheckResult(
        rule="business-hours",
        guardrail="change-window",
        category="timing",  # type: ignore[arg-type]
        status=CheckStatus.WAIT,
        retry_after=until,
        evidence={"timezone": "Europe/Berlin"},
    )
    report = GuardrailReport(
        decision=Decision.WAIT,
        report_hash="h",
        evaluated_at=until,
        checks=[check],
        retry_after=until,
    )
    assert window_wait_summary(until, report) == "wait for window until Mon 09:00 Europe/Berlin"
    assert window_wait_summary(until, None) == "wait for window until Mon 08:00 UTC"


async def test_every_activity_in_a_change_carries_a_summary(
    env: WorkflowEnvironment, task_queue: str
) -> None:
    """The timeline names each check and target: ``check switch``, ``recording web-01``."""
    RecordingKind.ledger = Ledger()
    Switch.outcome = "pass"
    req = _request(targets=2)
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        handle = await env.client.start_workflow(
            "GuardedChange", req, id=req.change_id, task_queue=task_queue, result_type=ChangeResult
        )
        assert (await handle.result()).outcome is Outcome.COMPLETED
        summaries: list[str] = []
        gate = env.client.get_workflow_handle(f"{req.change_id}/gate-1")
        for h in (handle, gate):
            async for event in h.fetch_history_events():
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    payload = event.user_metadata.summary
                    assert payload.data, f"activity {event.event_id} of {h.id} has no summary"
                    summaries.append(data_converter.payload_converter.from_payload(payload, str))
    assert {"check switch", "recording web-01", "recording web-02"} <= set(summaries)
    assert "record outcome in the ledger" in summaries
