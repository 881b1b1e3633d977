"""Hostile input from any client never fails a workflow task nor leaves a change unanswerable (I10).

Payloads go through a real client to the real workflow on the dev server, raw: no payload, ``null``,
wrong types, two arguments, non-JSON bytes in an unknown encoding, absurd numbers and huge strings.
A worker with ``max_cached_workflows=0`` replays every task, so a payload that only breaks on replay
would show too. Property-based cases come from hypothesis; the regression cases of issue 10 are
spelled out one by one.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from activities.audit import SqliteAuditStore
from changeguard.client import while_not_ready
from tests.fakes import Ledger, RecordingKind, Switch
from tests.helpers import until_phase, until_status
from workflows.models import AuditAction, AuditQuery, ChangeResult, ChangeStatus, Outcome, Phase

pytestmark = pytest.mark.integration

OPERATORS = "operators:\n  bob: [sre-leads]\n  carol: [sre-leads]\n"


@pytest.fixture
def operators() -> str:
    return OPERATORS


@pytest.fixture(autouse=True)
def reset() -> Ledger:
    RecordingKind.ledger = Ledger()
    Switch.outcome = "fail"
    return RecordingKind.ledger


def request(change_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A plain-dict change request, as any client would send it."""
    doc: dict[str, Any] = {
        "kind": "recording",
        "summary": "hostile input",
        "requester": "alice",
        "team": "web",
        "environment": "prod",
        "targets": [{"id": "t1"}, {"id": "t2"}],
        "rollout": {"waves": ["1", "100%"], "bake": "0s"},
        "policy": {
            "guardrails": [
                {
                    "use": "switch",
                    "opt_out": {"approvers": ["sre-leads"], "max_duration": "1h"},
                }
            ]
        },
    }
    if change_id is not None:
        doc["change_id"] = change_id
    doc.update(overrides)
    return doc


async def task_failures(handle: WorkflowHandle[Any, Any]) -> list[str]:
    """Every WorkflowTaskFailed event of the run, with its failure message.

    Three causes are the server's protocol, not failures of ours: the marker a Temporal reset
    writes at the reset point; "unhandled command" (new signals arrived while a task completed the
    workflow: the server asks for another task, which sees them); and "force close command" (so
    many signal bytes arrived during a task that the server closed it to flush them into a new
    one; sdk-core's own tests ignore it likewise).
    """
    benign = {
        WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW,
        WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND,
        WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_FORCE_CLOSE_COMMAND,
    }
    out = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            attrs = event.workflow_task_failed_event_attributes
            if attrs.cause not in benign:
                out.append(f"{WorkflowTaskFailedCause.Name(attrs.cause)}: {attrs.failure.message}")
    return out


def raw(data: bytes, encoding: bytes = b"json/plain") -> RawValue:
    """A payload sent as is: the client's converter does not touch it."""
    return RawValue(Payload(metadata={"encoding": encoding}, data=data))


async def start(client: Client, task_queue: str, *args: Any, wid: str | None = None) -> Any:
    wid = wid or f"hostile-{uuid.uuid4().hex[:10]}"
    return await client.start_workflow(
        "GuardedChange", args=list(args), id=wid, task_queue=task_queue, result_type=ChangeResult
    )


async def awaiting(client: Client, task_queue: str) -> WorkflowHandle[Any, ChangeResult]:
    handle = await start(client, task_queue, request())
    await until_phase(handle, Phase.AWAITING_APPROVAL)
    return handle


# ---------------------------------------------------------------------------------- bad starts


BAD_STARTS: list[tuple[str, list[Any]]] = [
    ("no input", []),
    ("null", [None]),
    ("a number", [42]),
    ("two arguments", [request(), request()]),
    ("not JSON", [raw(b"{not json")]),
    ("unknown encoding", [raw(b"\x00\x01", b"binary/weird")]),
    ("bake 1e308", [request(rollout={"waves": ["100%"], "bake": 1e308})]),
    ("bake 999999999999d", [request(rollout={"waves": ["100%"], "bake": "999999999999d"})]),
    ("a 5,000-character team", [request(team="x" * 5000)]),
    ("a NUL in the summary", [request(summary="deploy\x00")]),
    ("a policy path", [request(policy="/etc/changeguard/policy.yaml")]),
    ("a deadline in the past", [request(deadline="2020-01-01T00:00:00Z")]),
    ("another change_id", [request(change_id="someone-else")]),
    ("a huge params blob", [request(params={"blob": "x" * 1_100_000})]),
]


@pytest.mark.parametrize(("case", "args"), BAD_STARTS, ids=[c for c, _ in BAD_STARTS])
async def test_a_bad_start_is_rejected_at_once_with_its_reason(
    fake_worker: Client, task_queue: str, store: SqliteAuditStore, case: str, args: list[Any]
) -> None:
    """Every malformed start ends ``rejected`` with a reason, no workflow task fails, status answers."""
    handle = await start(fake_worker, task_queue, *args)
    result = await asyncio.wait_for(handle.result(), timeout=30)
    assert result.outcome is Outcome.REJECTED
    assert result.message and "Traceback" not in result.message
    assert "NoneType" not in result.message
    assert await task_failures(handle) == []
    status = await handle.query("status", result_type=ChangeStatus)
    assert (status.phase, status.change_id) == (Phase.REJECTED, handle.id)
    assert RecordingKind.ledger.applied == []
    refused = [
        r for r in store.list(AuditQuery(change_id=handle.id)) if r.action is AuditAction.REFUSED
    ]
    assert len(refused) == 1 and refused[0].reason == result.message


# ------------------------------------------------------------------------- signals and updates


async def test_signal_without_payload_is_recorded_and_the_change_still_answers(
    fake_worker: Client, task_queue: str, store: SqliteAuditStore
) -> None:
    """approve_signal with no input is recorded as refused; approvals still work after it."""
    handle = await awaiting(fake_worker, task_queue)
    await handle.signal("approve_signal", args=[])
    status = await until_status(handle, lambda s: bool(s.rejected_approvals))
    assert status.phase is Phase.AWAITING_APPROVAL
    assert "missing" in status.rejected_approvals[0].why
    assert status.report is not None
    await handle.execute_update(
        "approve",
        {
            "guardrails": ["switch"],
            "approver": "bob",
            "reason": "known issue",
            "report_hash": status.report.report_hash,
        },
    )
    assert (await handle.result()).outcome is Outcome.COMPLETED
    assert await task_failures(handle) == []
    actions = [r.action for r in store.list(AuditQuery(change_id=handle.id))]
    assert AuditAction.APPROVAL_REJECTED in actions and AuditAction.APPROVAL in actions


@pytest.mark.parametrize("update", ["abort", "rollback", "resume", "approve"])
@pytest.mark.parametrize(
    "payload", [[], [None], [1, 2], [raw(b"\xff")]], ids=["none", "null", "two", "raw"]
)
async def test_a_malformed_update_is_refused_in_plain_words(
    fake_worker: Client, task_queue: str, update: str, payload: list[Any]
) -> None:
    """Malformed operator updates are refused by their validator, saying what to send."""
    handle = await awaiting(fake_worker, task_queue)
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(update, args=payload)
    cause = caught.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "Refused"
    assert "NoneType" not in cause.message and "object has no attribute" not in cause.message
    status = await handle.query("status", result_type=ChangeStatus)
    assert status.phase is Phase.AWAITING_APPROVAL
    await handle.execute_update("abort", {"operator": "oscar", "reason": "end of test"})
    assert (await handle.result()).outcome is Outcome.ABORTED
    assert await task_failures(handle) == []


async def test_a_megabyte_signal_field_cannot_poison_the_status(
    fake_worker: Client, task_queue: str
) -> None:
    """A 1 MB approve_signal is kept as a bounded excerpt; many of them keep the status small."""
    handle = await awaiting(fake_worker, task_queue)
    huge = {
        "guardrails": ["switch"],
        "approver": "x" * 1_000_000,
        "reason": "r",
        "report_hash": "h",
    }
    for _ in range(25):
        await handle.signal("approve_signal", huge)
    status = await until_status(handle, lambda s: len(s.rejected_approvals) == 20, within=60)
    assert all(len(r.approver) <= 128 and len(r.payload) <= 200 for r in status.rejected_approvals)
    assert len(status.model_dump_json()) < 100_000
    # The burst makes the server force-close tasks (benign, task_failures); until one completes it
    # refuses queries and updates as not ready, which our clients wait out (changeguard.client).
    await while_not_ready(
        lambda: handle.execute_update("abort", {"operator": "oscar", "reason": "end of test"})
    )
    await handle.result()
    assert await task_failures(handle) == []


async def test_a_nul_in_an_approval_reason_is_refused_at_once(
    fake_worker: Client, task_queue: str
) -> None:
    """A NUL bound for the audit store is refused by the validator, not retried against the store."""
    handle = await awaiting(fake_worker, task_queue)
    status = await handle.query("status", result_type=ChangeStatus)
    assert status.report is not None
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await asyncio.wait_for(
            handle.execute_update(
                "approve",
                {
                    "guardrails": ["switch"],
                    "approver": "bob",
                    "reason": "ok\x00",
                    "report_hash": status.report.report_hash,
                },
            ),
            timeout=10,
        )
    assert isinstance(caught.value.cause, ApplicationError)
    assert "NUL" in caught.value.cause.message
    await handle.execute_update("abort", {"operator": "oscar", "reason": "end of test"})
    await handle.result()


# ------------------------------------------------------------------------------ property-based

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = [
    "guardrails",
    "approver",
    "reason",
    "report_hash",
    "expires_in",
    "operator",
    "requested_by",
]
SHAPED = st.dictionaries(
    st.sampled_from(FIELDS), JSON | st.text(min_size=2000, max_size=3000), max_size=5
)
PAYLOADS = st.one_of(
    st.just([]),
    st.lists(JSON | SHAPED, min_size=1, max_size=2),
    st.binary(max_size=40).map(lambda b: [raw(b, b"binary/" + b[:3].hex().encode())]),
    st.binary(max_size=40).map(lambda b: [raw(b"{" + b)]),
)
TARGETS = st.sampled_from(
    [
        ("signal", "approve_signal"),
        ("signal", "recheck"),
        ("update", "approve"),
        ("update", "abort"),
        ("update", "rollback"),
        ("update", "resume"),
        ("query", "status"),
    ]
)


async def test_generated_payloads_never_fail_a_task(fake_worker: Client, task_queue: str) -> None:
    """Generated payloads to every signal, update and query leave the change answerable, unchanged."""
    handle = await awaiting(fake_worker, task_queue)
    loop = asyncio.get_running_loop()
    sent: list[str] = []

    async def send(target: tuple[str, str], args: list[Any]) -> None:
        how, name = target
        if how == "signal":
            await handle.signal(name, args=args)
        elif how == "query":
            await handle.query(name, args=args, result_type=ChangeStatus)
        else:
            try:
                await handle.execute_update(name, args=args)
            except WorkflowUpdateFailedError as exc:
                assert isinstance(exc.cause, ApplicationError), exc.cause
                assert "NoneType" not in exc.cause.message
        # It answers, and is (back) where it was: a well-formed recheck re-gates to the same place.
        status = await until_status(handle, lambda s: s.phase is Phase.AWAITING_APPROVAL, within=15)
        assert status.outcome is None, (name, args, status.message)

    @settings(
        max_examples=120,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(target=TARGETS, args=PAYLOADS)
    def property_holds(target: tuple[str, str], args: list[Any]) -> None:
        if target[1] in ("abort", "rollback") and _valid_action(args):
            return  # a well-formed abort is not hostile: it would end the change
        sent.append(target[1])
        asyncio.run_coroutine_threadsafe(send(target, args), loop).result(timeout=30)

    await asyncio.to_thread(property_holds)
    assert len(sent) >= 100
    assert await task_failures(handle) == []
    await handle.execute_update("abort", {"operator": "oscar", "reason": "end of test"})
    assert (await handle.result()).outcome is Outcome.ABORTED
    assert await task_failures(handle) == []


SETTLED = {Phase.AWAITING_APPROVAL, Phase.BLOCKED, Phase.WAITING} | {
    Phase.COMPLETED,
    Phase.REJECTED,
    Phase.ROLLED_BACK,
    Phase.ABORTED,
    Phase.FAILED,
}
TERMINAL = {Phase.COMPLETED, Phase.REJECTED, Phase.ROLLED_BACK, Phase.ABORTED, Phase.FAILED}


def _valid_action(args: list[Any]) -> bool:
    from workflows.inputs import Refusal, decode
    from workflows.models import OperatorAction

    return not isinstance(decode(OperatorAction, args, what="x"), Refusal)


async def test_generated_start_payloads_end_rejected(fake_worker: Client, task_queue: str) -> None:
    """Generated start inputs either run as valid changes or end ``rejected``; none fails a task."""
    loop = asyncio.get_running_loop()
    handles: list[WorkflowHandle[Any, ChangeResult]] = []

    async def one(args: list[Any]) -> None:
        handle = await start(fake_worker, task_queue, *args)
        handles.append(handle)
        status = await until_status(handle, lambda s: s.phase in SETTLED, within=30)
        if status.phase is Phase.REJECTED:
            assert status.message and "Traceback" not in status.message
        elif status.phase not in TERMINAL:  # a mutation that is still a valid request: it runs
            await handle.execute_update("abort", {"operator": "oscar", "reason": "end of test"})
        await asyncio.wait_for(handle.result(), timeout=30)

    base = request()
    mutated = st.builds(
        lambda key, value: [{**base, key: value}],
        st.sampled_from([*base.keys(), "change_id", "deadline", "extra"]),
        JSON,
    )

    @settings(
        max_examples=40,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(args=PAYLOADS | mutated)
    def property_holds(args: list[Any]) -> None:
        asyncio.run_coroutine_threadsafe(one(args), loop).result(timeout=60)

    await asyncio.to_thread(property_holds)
    failures = [f for h in handles for f in await task_failures(h)]
    assert failures == []


async def test_a_null_rollback_during_a_bake_is_refused_and_a_real_one_still_works(
    fake_worker: Client, task_queue: str
) -> None:
    """During a bake, null abort/rollback payloads are refused; the change still rolls back."""
    Switch.outcome = "pass"
    handle = await start(
        fake_worker, task_queue, request(rollout={"waves": ["1", "100%"], "bake": "1h"})
    )
    await until_phase(handle, Phase.BAKING)
    assert RecordingKind.ledger.applied == ["t1"]  # one target is on the new version
    for update in ("rollback", "abort"):
        with pytest.raises(WorkflowUpdateFailedError) as caught:
            await handle.execute_update(update, None)
        assert isinstance(caught.value.cause, ApplicationError)
        assert "the operator action is missing (null)" in caught.value.cause.message
    assert (await handle.query("status", result_type=ChangeStatus)).phase is Phase.BAKING
    await handle.execute_update("rollback", {"operator": "oscar", "reason": "bad metrics"})
    result = await handle.result()
    assert (result.outcome, result.reverted) == (Outcome.ROLLED_BACK, ["t1"])
    assert RecordingKind.ledger.reverted == ["t1"]
    assert await task_failures(handle) == []
