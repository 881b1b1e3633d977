"""``changeguard start``, ``checks`` and ``status``: start a change, follow it, look at it."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.markup import escape
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import (
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.service import RPCError

import changeguard
from changeguard.client import ChangeExists, GateRefused, not_ready, with_change_id
from cli import exitcodes, signing
from cli.changefile import ChangeFileError, load_change
from cli.pending import QUERY_TIMEOUT, liveness, unanswered, went_unanswered
from cli.render import console, err, print_json, report_table, status_table
from worker.settings import Settings
from workflows.identity import start_document
from workflows.models import TERMINAL_PHASES, ChangeRequest, ChangeStatus, PendingWork, Phase

POLL_INTERVAL = 0.5


async def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    """Validate a change file, start the change, optionally follow it to its end."""
    scheduled = load_change(Path(args.file), not_before=args.not_before)
    request, change_id = with_change_id(scheduled)
    unsigned = request
    signed = signing.sign_or_stop(
        args,
        lambda expires: start_document(unsigned, change_id, expires),
        timedelta(hours=1),
        lambda signature: unsigned.model_copy(update={"signature": signature}),
    )
    if isinstance(signed, int):
        return signed
    request = request.model_copy(update={"signature": signed.signature})
    client = await changeguard.connect(settings=settings)
    run_id = await start_change(client, request, quiet=args.json)
    if not args.wait:
        if args.json:
            url = settings.workflow_url(change_id)
            print_json({"change_id": change_id, "run_id": run_id, "url": url})
        return exitcodes.OK
    return await follow(client.get(change_id), settings, as_json=args.json)


async def start_change(
    client: changeguard.Client, request: ChangeRequest, *, quiet: bool = False
) -> str | None:
    """Start a validated change (:meth:`changeguard.Client.start`); returns its run id.

    Raises:
        ChangeFileError: a change with that id exists already.
    """
    try:
        change = await client.start(request)
    except ChangeExists as exc:
        raise ChangeFileError(Path(exc.change_id), [str(exc)]) from exc
    if not quiet:
        console.print(
            f"Started change [bold]{change.id}[/] ({request.kind}, "
            f"{len(request.targets)} targets)\n  {client.url(change.id)}"
        )
    run_id: str | None = change.handle.result_run_id
    return run_id


async def follow(change: changeguard.Change, settings: Settings, *, as_json: bool) -> int:
    """Print phase changes until the change ends or stops to wait for a person."""
    async for status in change.follow(interval=POLL_INTERVAL):
        if not as_json:
            console.print(f"  [bold]{status.phase.value:<17}[/] {escape(status.message)}")
        if status.phase in (Phase.BLOCKED, Phase.AWAITING_APPROVAL):
            return _show_status(status, settings, as_json=as_json)
    try:
        result = await change.result()
    except WorkflowFailureError as exc:
        err.print(f"[red]change {change.id} failed: {exc.cause}[/]")
        return exitcodes.UNDONE
    if as_json:
        print_json(result)
    else:
        if result.report is not None:
            console.print(report_table(result.report))
        final = await change.status()
        console.print(status_table(final, settings.workflow_url(change.id)))
    return exitcodes.for_outcome(result.outcome)


def _show_status(status: ChangeStatus, settings: Settings, *, as_json: bool) -> int:
    if as_json:
        print_json(status)
    else:
        if status.report is not None:
            console.print(report_table(status.report))
        console.print(status_table(status, settings.workflow_url(status.change_id)))
    return exitcodes.for_phase(status.phase)


async def cmd_checks(args: argparse.Namespace, settings: Settings) -> int:
    """Run the gate alone (no mutation) and print its report."""
    request = load_change(Path(args.file))
    client = await changeguard.connect(settings=settings)
    try:
        report = await client.checks(request)
    except GateRefused as exc:
        # The workers' bundle refused the request's additions, or governs nothing here.
        return exitcodes.fail("the gate refused the change:", str(exc), exitcodes.BLOCKED)
    if args.json:
        print_json(report)
    else:
        console.print(report_table(report))
    return exitcodes.for_decision(report.decision)


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Show a change's status (works on finished changes too)."""
    change = (await changeguard.connect(settings=settings)).get(args.id)
    status: ChangeStatus | None = None
    refused = False
    try:
        status = await change.status(rpc_timeout=QUERY_TIMEOUT)
    except RPCError as exc:
        if not went_unanswered(exc):
            raise
        why = exc.message  # no worker answered: show what the server knows (cli/pending.py)
        refused = not_ready(exc)  # the server refused it, after NOT_READY_WAIT of retries
    desc = await change.handle.describe()
    if status is None:
        status = unanswered(desc, args.id, why, refused=refused)
        err.print(f"[yellow]{escape(status.message)}[/]")
    if desc.status is WorkflowExecutionStatus.CANCELED and status.phase not in TERMINAL_PHASES:
        status.phase = Phase.ABORTED
    status.pending = pending_work(desc)
    return _show_status(status, settings, as_json=args.json)


def pending_work(desc: WorkflowExecutionDescription) -> list[PendingWork]:
    """The change's activities the server is running or retrying, with the last failure.

    This is where a worker's circuit breaker shows up for operators: a mutation retrying with
    ``CircuitOpen: … retry in 12s`` is refused by the breaker, not by the target.
    """
    now = datetime.now(UTC)
    out = []
    for p in desc.raw_description.pending_activities:
        failure = p.last_failure
        message = ""
        if failure.message:
            kind = failure.application_failure_info.type if failure.application_failure_info else ""
            message = f"{kind}: {failure.message}" if kind else failure.message
        next_in = None
        if p.HasField("next_attempt_schedule_time"):
            next_in = max(0.0, (p.next_attempt_schedule_time.ToDatetime(UTC) - now).total_seconds())
        out.append(
            PendingWork(
                activity=p.activity_type.name,
                attempt=p.attempt,
                state=PendingActivityState.Name(p.state).removeprefix("PENDING_ACTIVITY_STATE_"),
                last_failure=message,
                next_attempt_in_s=next_in,
                **liveness(p, now=now),  # suspicious / stalled / paused / handed off, and why
            )
        )
    return out
