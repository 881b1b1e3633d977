"""The ``changeguard`` command. Exit codes are contract: see :mod:`cli.exitcodes`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.markup import escape
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.service import RPCError, RPCStatusCode

import changeguard
from activities.audit import AuditStoreError
from changeguard.client import ChangeExists, GateRefused, NoReport, Refused, with_change_id
from cli import exitcodes, signing
from cli import replay as replay_cli
from cli.audit import add_parser as add_audit_parser
from cli.changefile import ChangeFileError, load_change
from cli.pending import QUERY_TIMEOUT, liveness, unanswered, went_unanswered
from cli.render import console, err, print_json, report_table, status_table
from cli.report import add_parser as add_report_parser
from guardrails.bundle import BundleError
from guardrails.plugins import validation_problems
from worker import telemetry, waiting
from worker.client import SearchAttributesMissing, TemporalUnreachable
from worker.devserver import DevServerError
from worker.exit import exit_now
from worker.main import DeploymentError, PolicyMissing
from worker.settings import DEPLOYMENT, Settings, SettingsError
from workflows.identity import action_document, approval_document, start_document
from workflows.identity_models import Signature, SignedDocument, document_digest
from workflows.models import (
    TERMINAL_PHASES,
    ChangeRequest,
    ChangeStatus,
    OperatorAction,
    PendingWork,
    Phase,
    RecheckInput,
)

POLL_INTERVAL = 0.5


# ------------------------------------------------------------------------------------------ start


async def cmd_start(args: argparse.Namespace, settings: Settings) -> int:
    """Validate a change file, start the change, optionally follow it to its end."""
    scheduled = load_change(Path(args.file), not_before=args.not_before)
    request, change_id = with_change_id(scheduled)
    unsigned = request
    signed = _signed(
        args, lambda expires: start_document(unsigned, change_id, expires), timedelta(hours=1)
    )
    if signed is None or args.print_nonce:
        return exitcodes.INVALID if signed is None else exitcodes.OK
    request = request.model_copy(update={"signature": signed.signature})
    if args.print_json:
        print_json(request.model_dump(mode="json"))
        return exitcodes.OK
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


# ------------------------------------------------------------------------------------------ checks


async def cmd_checks(args: argparse.Namespace, settings: Settings) -> int:
    """Run the gate alone (no mutation) and print its report."""
    request = load_change(Path(args.file))
    client = await changeguard.connect(settings=settings)
    try:
        report = await client.checks(request)
    except GateRefused as exc:
        # The workers' bundle refused the request's additions, or governs nothing here.
        err.print(f"[bold red]the gate refused the change:[/] {escape(str(exc))}")
        return exitcodes.BLOCKED
    if args.json:
        print_json(report)
    else:
        console.print(report_table(report))
    return exitcodes.for_decision(report.decision)


# ------------------------------------------------------------------------------------------ status


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Show a change's status (works on finished changes too)."""
    change = (await changeguard.connect(settings=settings)).get(args.id)
    status: ChangeStatus | None = None
    try:
        status = await change.status(rpc_timeout=QUERY_TIMEOUT)
    except RPCError as exc:
        if not went_unanswered(exc):
            raise
        why = exc.message  # no worker answered: show what the server knows (cli/pending.py)
    desc = await change.handle.describe()
    if status is None:
        status = unanswered(desc, args.id, why)
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


async def cmd_recheck(args: argparse.Namespace, settings: Settings) -> int:
    """Ask a blocked or waiting change to run its gate again now."""
    signed = _signed(
        args,
        lambda expires: action_document("recheck", args.id, args.by, args.reason, expires),
        timedelta(minutes=15),
    )
    if signed is None or args.print_nonce:
        return exitcodes.INVALID if signed is None else exitcodes.OK
    if args.print_json:
        print_json(
            RecheckInput(
                requested_by=args.by, reason=args.reason, signature=signed.signature
            ).model_dump(mode="json")
        )
        return exitcodes.OK
    change = (await changeguard.connect(settings=settings)).get(args.id)
    await change.recheck(requested_by=args.by, reason=args.reason, signature=signed.signature)
    console.print(f"Recheck requested for {args.id}")
    return exitcodes.OK


async def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    """Approve opt-outable failures of a change's current report (the ``approve`` update)."""
    change = (await changeguard.connect(settings=settings)).get(args.id)
    try:
        approval = await change.prepare_approval(
            args.guardrail,
            approver=args.approver,
            reason=args.reason,
            report_hash=args.report_hash,
            expires_in=args.expires_in,
        )
        signed = _signed(
            args,
            lambda expires: approval_document(approval, args.id, expires),
            approval.expires_in,
        )
        if signed is None or args.print_nonce:
            return exitcodes.INVALID if signed is None else exitcodes.OK
        approval = approval.model_copy(update={"signature": signed.signature})
        if args.print_json:
            print_json(approval.model_dump(mode="json"))
            return exitcodes.OK
        result = await change.submit_approval(approval)
    except NoReport as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        return exitcodes.INVALID
    except ValidationError as exc:
        for problem in validation_problems(exc):
            err.print(f"[red]invalid approval:[/] {escape(problem)}")
        return exitcodes.INVALID
    except Refused as exc:
        err.print(f"[bold red]approval refused:[/] {escape(exc.reason)}")
        return exitcodes.INVALID
    if result.still_needed:
        needed = ", ".join(f"{g} ({n} more)" for g, n in result.still_needed.items())
        console.print(f"Approved {', '.join(result.accepted)}; still needed: {needed}")
        return exitcodes.BLOCKED
    console.print(f"Approved {', '.join(result.accepted)}; every failure is covered.")
    return exitcodes.OK


async def cmd_operator(args: argparse.Namespace, settings: Settings) -> int:
    """Send an operator update (``abort``, ``rollback``, ``resume``); refusals exit 2."""
    signed = _signed(
        args,
        lambda expires: action_document(args.command, args.id, args.operator, args.reason, expires),
        timedelta(minutes=15),
    )
    if signed is None or args.print_nonce:
        return exitcodes.INVALID if signed is None else exitcodes.OK
    if args.print_json:
        action = OperatorAction(
            operator=args.operator, reason=args.reason, signature=signed.signature
        )
        print_json(action.model_dump(mode="json"))
        return exitcodes.OK
    client = await changeguard.connect(settings=settings)
    change = client.get(args.id)
    send = {"abort": change.abort, "rollback": change.rollback, "resume": change.resume}
    try:
        result = await send[args.command](
            operator=args.operator, reason=args.reason, signature=signed.signature
        )
    except Refused as exc:
        err.print(f"[bold red]{args.command} refused:[/] {escape(exc.reason)}")
        return exitcodes.INVALID
    console.print(f"{args.id}: {result.message}")
    if args.wait:
        return await follow(change, settings, as_json=False)
    return exitcodes.OK


@dataclasses.dataclass
class _Signed:
    """What :func:`_signed` made: the signature to attach, or ``None`` for an unsigned payload."""

    signature: Signature | None = None


def _signed(
    args: argparse.Namespace,
    document: Callable[[str], SignedDocument],
    default_expiry: timedelta,
) -> _Signed | None:
    """Sign what the flags ask for; ``None`` after printing why signing failed (exit 2).

    With ``--print-nonce`` the document's digest (an ID token's nonce) is printed instead.
    """
    if not signing.wants_signature(args):
        return _Signed()
    try:
        doc = document(signing.expiry(args, default_expiry))
        if args.print_nonce:
            print(document_digest(doc))
            return _Signed()
        return _Signed(signing.signature_for(doc, args))
    except signing.SigningError as exc:
        err.print(f"[bold red]cannot sign:[/] {escape(str(exc))}")
        return None


# ------------------------------------------------------------------------------------------ servers


def with_versioning(args: argparse.Namespace, settings: Settings, *, set_current: bool) -> Settings:
    """The settings with the command line's ``--deployment``, ``--build-id``, ``--set-current``.

    ``set_current`` is what an unset ``--set-current/--no-set-current`` means for this command.

    Raises:
        SettingsError: a name the server would refuse, or ``--set-current`` without a deployment.
    """
    deployment = args.deployment or settings.deployment
    if args.versioned and deployment is None:
        deployment = DEPLOYMENT
    if deployment is None:
        return dataclasses.replace(settings, set_current=bool(args.set_current))
    return dataclasses.replace(
        settings,
        deployment=deployment,
        build_id=args.build_id or settings.build_id,
        set_current=set_current if args.set_current is None else args.set_current,
    )


async def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Run a worker until interrupted (versioned when a deployment is named)."""
    from worker.main import serve

    try:
        settings = with_versioning(args, settings, set_current=settings.set_current)
    except SettingsError as exc:
        err.print(f"[bold red]invalid settings:[/] {escape(str(exc))}")
        return exitcodes.INVALID
    await serve(settings)
    return exitcodes.OK


async def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    """Run the embedded dev server, the demo fleet and a worker until Ctrl-C.

    With ``--versioned`` (or a deployment in the settings) the stack's worker is versioned and,
    being the only worker, is made the deployment's current version unless ``--no-set-current``.
    """
    import demo
    from demo.stack import DEMO_BUNDLE, DevStack
    from worker.main import set_current_version

    try:
        versioning = with_versioning(args, settings, set_current=True)
    except SettingsError as exc:
        err.print(f"[bold red]invalid settings:[/] {escape(str(exc))}")
        return exitcodes.INVALID
    demo_operators = os.path.join(os.path.dirname(demo.__file__), "operators.yaml")
    directory = (
        settings.directory if os.environ.get("CHANGEGUARD_DIRECTORY") else f"yaml:{demo_operators}"
    )
    stack = DevStack(
        policy=settings.policy or DEMO_BUNDLE,  # the demo's platform bundle unless told otherwise
        port=args.port,
        ui_port=args.ui_port,
        db=Path(args.db),
        fleet_port=args.fleet_port,
        audit_url=settings.audit_url,
        directory=directory,  # the demo's operators unless CHANGEGUARD_DIRECTORY says otherwise
        pagers=settings.pagers,
    )
    # The stack builds its worker from ``stack.settings``: carry the deployment version over.
    stack.settings = dataclasses.replace(
        stack.settings,
        deployment=versioning.deployment,
        build_id=versioning.build_id,
        set_current=versioning.set_current,
    )
    async with stack:
        console.print(stack.banner())
        version = stack.settings.deployment_version()
        if version is None:
            console.print("  Versioning    off (unversioned worker; --versioned to turn it on)")
        else:
            line = f"  Versioning    {version.to_canonical_string()}"
            if stack.settings.set_current and stack.client is not None:
                await set_current_version(stack.client, version)
                line += " (current)"
            console.print(line)
        await stack.wait_for_interrupt()
    return exitcodes.OK


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Run the demo scenario on a fresh embedded stack."""
    from cli.audit import cmd_audit
    from demo.scenario import run_demo

    async def start(client: Client, path: Path, settings: Settings, change_id: str) -> str:
        request = load_change(path).model_copy(update={"change_id": change_id})
        await start_change(changeguard.Client(client, settings), request)
        return change_id

    async def audit(settings: Settings, change_id: str) -> int:
        query = argparse.Namespace(change=change_id, limit=1000, json=False)
        return await cmd_audit(query, settings)

    return await run_demo(start=start, audit=audit, keep_running=args.keep_running)


# ------------------------------------------------------------------------------------------ main


def parser() -> argparse.ArgumentParser:
    """The argument parser (also documents every command)."""
    p = argparse.ArgumentParser(
        prog="changeguard",
        description="Run risky changes as durable Temporal workflows behind safety guardrails.",
        epilog="Exit codes: 0 completed/proceeds, 1 rolled back/aborted/failed, 2 invalid input, "
        "3 blocked/awaiting approval, 4 Temporal unreachable.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("start", help="validate a change file and start the change")
    s.add_argument("file")
    s.add_argument("--wait", action="store_true", help="follow the change until it ends or blocks")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.add_argument(
        "--not-before",
        metavar="ISO8601",
        help="schedule the change: it waits until then before its gate (a time with a zone, "
        "e.g. 2026-12-05T22:00:00+01:00, at most 90 days ahead)",
    )
    signing.add_arguments(s, what="change request (as its requester)")
    s.set_defaults(run=cmd_start)

    s = sub.add_parser("checks", help="run the guardrail gate only (no mutation)")
    s.add_argument("file")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=cmd_checks)

    s = sub.add_parser("status", help="show a change's status")
    s.add_argument("id")
    s.add_argument("--json", action="store_true")
    s.set_defaults(run=cmd_status)

    s = sub.add_parser("recheck", help="run a blocked change's gate again")
    s.add_argument("id")
    s.add_argument("--by", default="", help="who asks (recorded in the audit trail)")
    s.add_argument("--reason", default="")
    signing.add_arguments(s, what="recheck")
    s.set_defaults(run=cmd_recheck)

    s = sub.add_parser("approve", help="approve opt-outable failures of a change (audited)")
    s.add_argument("id")
    s.add_argument("--guardrail", action="append", required=True, help="repeat for several")
    s.add_argument("--approver", required=True, help="who approves (checked against the directory)")
    s.add_argument("--reason", required=True)
    s.add_argument("--report-hash", help="the report you reviewed (default: the current one)")
    s.add_argument("--expires-in", default="1h", help="capped by the policy's max_duration")
    signing.add_arguments(s, what="approval")
    s.set_defaults(run=cmd_approve)

    for name, text in (
        ("resume", "go on baking a paused change (after pause_and_page)"),
        ("abort", "stop a change and undo everything it applied (outcome aborted)"),
        ("rollback", "undo everything a change applied (outcome rolled_back)"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("id")
        s.add_argument("--operator", required=True, help="who acts (audited)")
        s.add_argument("--reason", required=True)
        s.add_argument("--wait", action="store_true", help="follow the change to its end")
        signing.add_arguments(s, what=name)
        s.set_defaults(run=cmd_operator)

    add_audit_parser(sub)
    add_report_parser(sub)

    s = sub.add_parser(
        "worker",
        help="run a worker",
        description="Run a worker. Unversioned unless a deployment is named (--deployment, "
        "--versioned or CHANGEGUARD_DEPLOYMENT); see docs/versioning.md.",
    )
    _versioning_arguments(s, set_current="default: CHANGEGUARD_SET_CURRENT, else no")
    s.set_defaults(run=cmd_worker)

    s = sub.add_parser("dev", help="embedded dev server + Web UI + worker + demo fleet")
    s.add_argument("--port", type=int, default=7233)
    s.add_argument("--ui-port", type=int, default=8233)
    s.add_argument("--db", default=".changeguard/temporal.db")
    s.add_argument("--fleet-port", type=int, default=8800)
    _versioning_arguments(s, set_current="default: yes, when versioned")
    s.set_defaults(run=cmd_dev)

    s = sub.add_parser("demo", help="run the demo scenario on a fresh embedded stack")
    s.add_argument("--keep-running", action="store_true")
    s.set_defaults(run=cmd_demo)

    replay_cli.add_parsers(sub)
    return p


def _versioning_arguments(s: argparse.ArgumentParser, *, set_current: str) -> None:
    g = s.add_argument_group("Worker Deployment Versioning (docs/versioning.md)")
    g.add_argument(
        "--versioned",
        action="store_true",
        help=f"join the Worker Deployment (default name {DEPLOYMENT!r}, or CHANGEGUARD_DEPLOYMENT)",
    )
    g.add_argument("--deployment", default=None, help="the deployment name (implies --versioned)")
    g.add_argument(
        "--build-id",
        default=None,
        help="this build's id (default: CHANGEGUARD_BUILD_ID, else the package version and a "
        "hash of workflows/)",
    )
    g.add_argument(
        "--set-current",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"make this version the deployment's current one once it polls ({set_current})",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``changeguard`` command."""
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        telemetry.trace_exporters()  # a bad OTEL_* is refused here, like any other setting
        waiting.interval_from_env()
    except SettingsError as exc:
        err.print(f"[bold red]invalid settings:[/] {escape(str(exc))}")
        return exitcodes.INVALID
    from worker.logging import configure

    quiet = args.command not in ("worker", "dev")
    configure(settings.log_format, logging.WARNING if quiet else logging.INFO)
    runner: Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]] = args.run
    try:
        return asyncio.run(runner(args, settings))
    except ChangeFileError as exc:
        err.print(f"[bold red]invalid change file[/] {escape(str(exc))}")
        return exitcodes.INVALID
    except SearchAttributesMissing as exc:
        err.print(f"[bold red]cannot run:[/] {escape(str(exc))}")
        return exitcodes.INVALID
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND and getattr(args, "id", None):
            err.print(f"[red]no running change with id {args.id!r}:[/] {escape(exc.message)}")
            return exitcodes.INVALID
        raise
    except DevServerError as exc:
        err.print(f"[bold red]cannot start the dev server:[/] {escape(str(exc))}")
        return exitcodes.INVALID
    except DeploymentError as exc:
        err.print(f"[bold red]worker versioning:[/] {escape(str(exc))}")
        return exitcodes.INVALID
    except PolicyMissing as exc:
        err.print(f"[bold red]cannot start the worker:[/] {escape(exc.problems[0])}")
        return exitcodes.INVALID
    except BundleError as exc:
        err.print(f"[bold red]cannot start the worker:[/] {escape(str(exc))}")
        return exitcodes.INVALID
    except AuditStoreError as exc:
        err.print(
            f"[bold red]audit store unusable:[/] {escape(str(exc))}; fix CHANGEGUARD_AUDIT_URL "
            "(sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE) or start the database"
        )
        return exitcodes.UNREACHABLE
    except TemporalUnreachable as exc:
        err.print(f"[bold red]Temporal unreachable:[/] {escape(str(exc))}")
        return exitcodes.UNREACHABLE
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """Console-script entry: run, then leave through :func:`worker.exit.exit_now`.

    The SDK's exit-time crash would otherwise turn a correct run into exit code -11.
    """
    exit_now(main())


if __name__ == "__main__":
    entry()
