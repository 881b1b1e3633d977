"""``changeguard recheck``, ``approve``, ``abort``, ``rollback``, ``resume``: act on a running change.

Each can be signed (``--sign``, ``--oidc-token``; :mod:`cli.signing`); ``--print-json`` prints the
payload it would send, ``--print-nonce`` the digest an ID token must carry.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from pydantic import ValidationError
from rich.markup import escape

import changeguard
from changeguard.client import NoReport, Refused
from cli import exitcodes, signing
from cli.changes import follow
from cli.render import console, err
from guardrails.plugins import validation_problems
from worker.settings import Settings
from workflows.identity import action_document, approval_document
from workflows.models import OperatorAction, RecheckInput


async def cmd_recheck(args: argparse.Namespace, settings: Settings) -> int:
    """Ask a blocked or waiting change to run its gate again now."""
    signed = signing.sign_or_stop(
        args,
        lambda expires: action_document("recheck", args.id, args.by, args.reason, expires),
        timedelta(minutes=15),
        lambda signature: RecheckInput(
            requested_by=args.by, reason=args.reason, signature=signature
        ),
    )
    if isinstance(signed, int):
        return signed
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
        unsigned = approval
        signed = signing.sign_or_stop(
            args,
            lambda expires: approval_document(unsigned, args.id, expires),
            unsigned.expires_in,
            lambda signature: unsigned.model_copy(update={"signature": signature}),
        )
        if isinstance(signed, int):
            return signed
        approval = approval.model_copy(update={"signature": signed.signature})
        result = await change.submit_approval(approval)
    except NoReport as exc:
        err.print(f"[red]{escape(str(exc))}[/]")
        return exitcodes.INVALID
    except ValidationError as exc:
        for problem in validation_problems(exc):
            err.print(f"[red]invalid approval:[/] {escape(problem)}")
        return exitcodes.INVALID
    except Refused as exc:
        return exitcodes.fail("approval refused:", exc.reason)
    if result.still_needed:
        needed = ", ".join(f"{g} ({n} more)" for g, n in result.still_needed.items())
        console.print(f"Approved {', '.join(result.accepted)}; still needed: {needed}")
        return exitcodes.BLOCKED
    console.print(f"Approved {', '.join(result.accepted)}; every failure is covered.")
    return exitcodes.OK


async def cmd_operator(args: argparse.Namespace, settings: Settings) -> int:
    """Send an operator update (``abort``, ``rollback``, ``resume``); refusals exit 2."""
    try:  # at the edge, before anything is signed or sent
        OperatorAction(operator=args.operator, reason=args.reason)
    except ValidationError as exc:
        for problem in validation_problems(exc):
            err.print(f"[red]invalid {args.command}:[/] {escape(problem)}")
        return exitcodes.INVALID
    signed = signing.sign_or_stop(
        args,
        lambda expires: action_document(args.command, args.id, args.operator, args.reason, expires),
        timedelta(minutes=15),
        lambda signature: OperatorAction(
            operator=args.operator, reason=args.reason, signature=signature
        ),
    )
    if isinstance(signed, int):
        return signed
    client = await changeguard.connect(settings=settings)
    change = client.get(args.id)
    send = {"abort": change.abort, "rollback": change.rollback, "resume": change.resume}
    try:
        result = await send[args.command](
            operator=args.operator, reason=args.reason, signature=signed.signature
        )
    except Refused as exc:
        return exitcodes.fail(f"{args.command} refused:", exc.reason)
    console.print(f"{args.id}: {result.message}")
    if args.wait:
        return await follow(change, settings, as_json=False)
    return exitcodes.OK
