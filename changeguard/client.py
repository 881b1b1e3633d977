"""The public client: start, follow, approve and steer changes from Python (docs/python-api.md).

Every call names the workflow and its handlers by method reference (``GuardedChangeWorkflow.run``,
``.status``, ``.approve``), so mypy follows a change from the request to the workflow and back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.client import (
    Client as TemporalClient,
)
from temporalio.client import (
    WorkflowExecution,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from worker.client import connect as _connect
from worker.settings import Settings
from workflows import ids, names
from workflows.gate import GuardrailGateWorkflow
from workflows.guarded_change import GuardedChangeWorkflow
from workflows.identity_models import Signature
from workflows.models import (
    TERMINAL_PHASES,
    Approval,
    ApprovalResult,
    ChangeContext,
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    GateInput,
    GuardrailReport,
    OperatorAction,
    OperatorActionResult,
    RecheckInput,
)
from workflows.priorities import change_priority
from workflows.summaries import static_details, static_summary

A = TypeVar("A")
R = TypeVar("R")
Update = workflow.UpdateMethodMultiParam[[GuardedChangeWorkflow, A], R]
"""The type of a ``GuardedChange`` update taking an ``A`` and answering an ``R``."""
OperatorUpdate = Update[OperatorAction, OperatorActionResult]
"""The type of the ``abort``, ``rollback`` and ``resume`` updates."""
FOLLOW_INTERVAL = 0.5
"""Seconds between two ``status`` queries while :meth:`Change.follow` waits for a change."""
CHECKS_DEADLINE = timedelta(hours=24)
"""A dry-run gate's deadline when the request names none."""
NOT_READY_WAIT = 10.0
"""Seconds a query or an update waits out the server's "Workflow Task in failed state" refusal."""
NOT_READY_DETAIL = "temporal.api.errordetails.v1.WorkflowNotReadyFailure"
"""The detail type in the server's not-ready refusal (:func:`not_ready`)."""


class ChangeExists(Exception):
    """A change with this id exists or existed already: every change needs a new id."""

    def __init__(self, change_id: str) -> None:
        super().__init__(
            f"change_id: a change with id {change_id!r} exists or existed already; "
            "every change needs a new id (omit change_id to generate one)"
        )
        self.change_id = change_id


class Refused(Exception):
    """The change refused an update (approve, abort, rollback, resume); ``reason`` says why."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} refused: {reason}")
        self.what = what
        self.reason = reason


class NoReport(Exception):
    """An approval was asked for before the change had a report (and no ``report_hash`` given)."""


class GateRefused(Exception):
    """The workers' policy bundle refused a dry-run gate (:meth:`Client.checks`)."""


def root_message(exc: BaseException) -> str:
    """The innermost failure's message (a workflow's failure wraps its activity's)."""
    while exc.__cause__ is not None or getattr(exc, "cause", None) is not None:
        exc = getattr(exc, "cause", None) or exc.__cause__  # type: ignore[assignment]
    return exc.message if isinstance(exc, ApplicationError) else str(exc)


def _refusal(what: str, exc: WorkflowUpdateFailedError) -> Refused:
    cause = exc.cause
    return Refused(what, cause.message if isinstance(cause, ApplicationError) else str(cause))


def not_ready(exc: BaseException) -> bool:
    """Whether the server refused a query or an update as not ready (the task is being retried).

    The server answers ``FAILED_PRECONDITION`` with a ``WorkflowNotReadyFailure`` ("Workflow Task
    in failed state") while the run's latest workflow task failed and its next attempt has not
    completed: for a moment when a burst of large signals makes it close a task to flush them,
    for good when the worker's code fails every attempt (docs/design.md, I10).
    """
    if not isinstance(exc, RPCError) or exc.status != RPCStatusCode.FAILED_PRECONDITION:
        return False
    try:
        details = exc.grpc_status.details
    except Exception:
        return False
    return any(d.type_url.endswith("/" + NOT_READY_DETAIL) for d in details)


async def while_not_ready(
    call: Callable[[], Awaitable[R]], *, wait: float | None = None, first_delay: float = 0.1
) -> R:
    """``call()``, retried while the server answers :func:`not_ready`, for ``wait`` seconds.

    The delay between tries grows from ``first_delay`` to 1 s; the last try is at the deadline
    (``wait``, default :data:`NOT_READY_WAIT`), and its refusal is raised as it came. Safe for
    queries (they change nothing) and for updates: a refused update was not admitted (send every
    try with the same update id, as :meth:`Change._update` does).
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + (NOT_READY_WAIT if wait is None else wait)
    delay = first_delay
    while True:
        try:
            return await call()
        except RPCError as exc:
            left = end - loop.time()
            if not not_ready(exc) or left <= 0:
                raise
        await asyncio.sleep(min(delay, left))  # the last try is at the deadline
        delay = min(delay * 2, 1.0)


def with_change_id(request: ChangeRequest) -> tuple[ChangeRequest, str]:
    """The request with its change id: its own, else a new one (drawn here, at the edge)."""
    if request.change_id is not None:
        return request, request.change_id
    change_id = ids.new_change_id()
    return request.model_copy(update={"change_id": change_id}), change_id


@dataclass
class Change:
    """One change: a typed handle on its ``GuardedChange`` workflow.

    Attributes:
        id: the change id (its workflow id).
        handle: the Temporal workflow handle, for anything this class does not wrap.
        execution: the listing entry when the change came from :meth:`Client.list`.
    """

    id: str
    handle: WorkflowHandle[GuardedChangeWorkflow, ChangeResult]
    execution: WorkflowExecution | None = None

    async def result(self) -> ChangeResult:
        """Wait for the change to end and return its result."""
        return await self.handle.result()

    async def status(self, *, rpc_timeout: timedelta | None = None) -> ChangeStatus:
        """Where the change is now (the ``status`` query; works on finished changes too).

        Waits out a brief :func:`not_ready` refusal (up to :data:`NOT_READY_WAIT`).
        """
        return await while_not_ready(
            lambda: self.handle.query(GuardedChangeWorkflow.status, rpc_timeout=rpc_timeout)
        )

    async def follow(self, *, interval: float = FOLLOW_INTERVAL) -> AsyncIterator[ChangeStatus]:
        """Yield the status each time its phase or message changes, until the change ends.

        Stop early by breaking out of the loop (e.g. on ``Phase.AWAITING_APPROVAL``).
        """
        seen: tuple[object, str] | None = None
        while True:
            status = await self.status()
            now = (status.phase, status.message)
            if now != seen:
                seen = now
                yield status
            if status.phase in TERMINAL_PHASES:
                return
            await asyncio.sleep(interval)

    async def approve(
        self,
        guardrails: Sequence[str],
        *,
        approver: str,
        reason: str,
        report_hash: str | None = None,
        expires_in: timedelta | str | None = None,
    ) -> ApprovalResult:
        """Approve opt-outable failures of the current report (the ``approve`` update).

        Args:
            guardrails: rule ids of the failing checks approved.
            approver: who approves (checked against the operator directory and the policy).
            reason: why (kept in the audit ledger).
            report_hash: the report approved; default: the change's current report.
            expires_in: how long the approval holds, a ``timedelta`` or e.g. ``"30m"`` (default
                one hour, capped by the policy).

        Raises:
            Refused: the change refused the approval; ``reason`` is the change's answer.
            NoReport: the change has no report yet.
            pydantic.ValidationError: a field is malformed (names the field).
        """
        approval = await self.prepare_approval(
            guardrails,
            approver=approver,
            reason=reason,
            report_hash=report_hash,
            expires_in=expires_in,
        )
        return await self.submit_approval(approval)

    async def prepare_approval(
        self,
        guardrails: Sequence[str],
        *,
        approver: str,
        reason: str,
        report_hash: str | None = None,
        expires_in: timedelta | str | None = None,
    ) -> Approval:
        """The :class:`Approval` :meth:`approve` sends, to sign first (docs/approvals.md).

        Raises:
            NoReport: no ``report_hash`` is given and the change has no report yet.
            pydantic.ValidationError: a field is malformed (names the field).
        """
        if report_hash is None:
            report = (await self.status()).report
            if report is None:
                raise NoReport(f"{self.id} has no report yet; nothing to approve")
            report_hash = report.report_hash
        fields: dict[str, Any] = {"expires_in": expires_in} if expires_in is not None else {}
        return Approval(
            guardrails=list(guardrails),
            approver=approver,
            reason=reason,
            report_hash=report_hash,
            **fields,
        )

    async def submit_approval(self, approval: Approval) -> ApprovalResult:
        """Send a prepared :class:`Approval` (the ``approve`` update).

        Raises:
            Refused: the change refused it.
        """
        return await self._update(GuardedChangeWorkflow.approve, "approval", approval)

    async def recheck(
        self, *, requested_by: str = "", reason: str = "", signature: Signature | None = None
    ) -> None:
        """Ask a blocked or waiting change to run its gate again now (the ``recheck`` signal)."""
        await self.handle.signal(
            GuardedChangeWorkflow.recheck,
            RecheckInput(requested_by=requested_by, reason=reason, signature=signature),
        )

    async def abort(
        self, *, operator: str, reason: str, signature: Signature | None = None
    ) -> OperatorActionResult:
        """Stop the change and undo everything applied (outcome ``aborted``).

        Raises:
            Refused: e.g. the change is already ending.
        """
        action = OperatorAction(operator=operator, reason=reason, signature=signature)
        return await self._update(GuardedChangeWorkflow.abort, "abort", action)

    async def rollback(
        self, *, operator: str, reason: str, signature: Signature | None = None
    ) -> OperatorActionResult:
        """Undo everything applied (outcome ``rolled_back``); only once mutations have begun.

        Raises:
            Refused: nothing applied yet (use :meth:`abort`), or the change is ending.
        """
        action = OperatorAction(operator=operator, reason=reason, signature=signature)
        return await self._update(GuardedChangeWorkflow.rollback, "rollback", action)

    async def resume(
        self, *, operator: str, reason: str, signature: Signature | None = None
    ) -> OperatorActionResult:
        """Go on baking after a pause-and-page.

        Raises:
            Refused: the change is not paused.
        """
        action = OperatorAction(operator=operator, reason=reason, signature=signature)
        return await self._update(GuardedChangeWorkflow.resume, "resume", action)

    async def _update(self, update: Update[A, R], what: str, arg: A) -> R:
        """Run an update of the change; its refusal raises :class:`Refused`.

        A :func:`not_ready` answer is waited out (up to :data:`NOT_READY_WAIT`), with one update id.
        """
        update_id = f"{what}-{uuid.uuid4()}"
        try:
            return await while_not_ready(
                lambda: self.handle.execute_update(update, arg, id=update_id)
            )
        except WorkflowUpdateFailedError as exc:
            raise _refusal(what, exc) from exc


@dataclass
class Client:
    """changeguard's client: build it with :func:`connect`.

    Attributes:
        temporal: the underlying Temporal client (pydantic data converter installed).
        settings: where changes start (``task_queue``) and the Web UI links.
    """

    temporal: TemporalClient
    settings: Settings

    async def start(self, request: ChangeRequest) -> Change:
        """Start a change; a request without ``change_id`` gets a new one.

        Raises:
            ChangeExists: a change with that id exists or existed already.
        """
        request, change_id = with_change_id(request)
        try:
            handle = await self.temporal.start_workflow(
                GuardedChangeWorkflow.run,
                request,
                id=change_id,
                task_queue=self.settings.task_queue,
                # A change id is used once: a second run would reuse its idempotency keys and the
                # target API would answer with the first run's effects, applying nothing.
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                # The Web UI's header: what, how many targets, where, whose (docs/operators.md).
                static_summary=static_summary(request),
                static_details=static_details(request, change_id),
                priority=change_priority(request.team),  # fairness per team (workflows/priorities)
            )
        except WorkflowAlreadyStartedError as exc:
            raise ChangeExists(change_id) from exc
        return Change(change_id, handle)

    def get(self, change_id: str, *, run_id: str | None = None) -> Change:
        """The change with this id (no call is made until you use it)."""
        handle = self.temporal.get_workflow_handle_for(
            GuardedChangeWorkflow.run, change_id, run_id=run_id
        )
        return Change(change_id, handle)

    async def checks(self, request: ChangeRequest) -> GuardrailReport:
        """Run the guardrail gate alone (no mutation) and return its report.

        Raises:
            GateRefused: the workers' policy bundle refused the request or governs nothing here.
        """
        request, change_id = with_change_id(request)
        deadline = request.deadline or datetime.now(UTC) + CHECKS_DEADLINE
        ctx = ChangeContext.of(request, change_id).model_copy(update={"deadline": deadline})
        try:
            return await self.temporal.execute_workflow(
                GuardrailGateWorkflow.run,
                GateInput(change=ctx, policy=request.policy, probe_only=True),
                id=ids.checks_id(change_id, uuid.uuid4().hex[:8]),
                task_queue=self.settings.task_queue,
            )
        except WorkflowFailureError as exc:
            raise GateRefused(root_message(exc)) from exc

    async def list(
        self, query: str | None = None, *, limit: int | None = None
    ) -> AsyncIterator[Change]:
        """The changes matching a visibility ``query`` (e.g. ``ChangeTeam = 'payments'``), newest first."""
        only = f"WorkflowType = '{names.GUARDED_CHANGE}'"
        full = f"{only} AND ({query})" if query else only
        async for execution in self.temporal.list_workflows(full, limit=limit):
            handle = self.temporal.get_workflow_handle_for(
                GuardedChangeWorkflow.run, execution.id, run_id=execution.run_id
            )
            yield Change(execution.id, handle, execution)

    def url(self, change_id: str) -> str:
        """The change's page in the Temporal Web UI."""
        return self.settings.workflow_url(change_id)


async def connect(
    target_host: str | None = None,
    *,
    namespace: str | None = None,
    task_queue: str | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> Client:
    """Connect to Temporal the way the ``temporal`` CLI does, with changeguard's converter built in.

    With no arguments the address and namespace come from ``TEMPORAL_ADDRESS`` /
    ``TEMPORAL_NAMESPACE`` (or a ``temporalio`` config profile; default ``localhost:7233`` and
    ``default``) and the task queue from ``CHANGEGUARD_TASK_QUEUE``.

    Args:
        target_host: the frontend's ``host:port`` (overrides the environment).
        namespace: the namespace (overrides the environment).
        task_queue: where changes start (overrides ``CHANGEGUARD_TASK_QUEUE``).
        settings: full settings (default: read from the environment).
        **options: further ``temporalio.client.Client.connect`` keyword arguments (``tls``, …).

    Raises:
        worker.client.TemporalUnreachable: the server did not answer; the message names it.
    """
    base = settings or Settings.from_env()
    connect_options = dict(base.connect)
    if target_host is not None:
        connect_options["target_host"] = target_host
    if namespace is not None:
        connect_options["namespace"] = namespace
    changed: dict[str, Any] = {"connect": connect_options}
    if task_queue is not None:
        changed["task_queue"] = task_queue
    resolved = dataclasses.replace(base, **changed)
    return Client(await _connect(resolved, **options), resolved)
