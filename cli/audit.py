"""``changeguard audit``: the audit trail, read from the audit store itself, not through Temporal.

The store outlives workflow histories (they have a retention period), so this command works for
changes Temporal has forgotten, and without a Temporal server at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime

from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from activities.audit import AuditStoreError, AuditUrlError, open_audit_store
from cli import exitcodes
from cli.render import console, err
from worker.settings import Settings
from workflows.models import AuditAction, AuditQuery, AuditRecord

_ACTION_STYLE = {
    AuditAction.APPROVAL: "green",
    AuditAction.APPROVAL_REJECTED: "bold red",
    AuditAction.ROLLBACK: "yellow",
    AuditAction.ABORT: "yellow",
    AuditAction.DEADLINE: "yellow",
}


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``audit`` subcommand to the ``changeguard`` parser."""
    p = sub.add_parser(
        "audit",
        help="list audit records (approvals, rejections, rechecks, resumes, rollbacks, aborts)",
        description="List audit records, oldest first, from the store CHANGEGUARD_AUDIT_URL names.",
    )
    p.add_argument("--change", metavar="ID", default=None, help="only this change's records")
    p.add_argument(
        "--limit", type=int, default=1000, help="at most this many, the most recent (default 1000)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document (a list)")
    p.set_defaults(run=cmd_audit)
    return p


async def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    """List audit records as a table, or as one JSON list with ``--json``.

    Returns:
        0 when listed (even none), 2 for a bad audit URL or limit, 4 when the store is unreachable.
    """
    try:
        query = AuditQuery(change_id=args.change, limit=getattr(args, "limit", 1000))
    except ValidationError as exc:
        err.print(f"[bold red]invalid input:[/] {escape(str(exc))}")
        return exitcodes.INVALID
    try:
        store = await asyncio.to_thread(open_audit_store, settings.audit_url)
    except AuditUrlError as exc:
        err.print(f"[bold red]invalid audit store URL:[/] {escape(str(exc))}")
        return exitcodes.INVALID
    except AuditStoreError as exc:
        err.print(f"[bold red]audit store unavailable:[/] {escape(str(exc))}")
        return exitcodes.UNREACHABLE
    try:
        records = await asyncio.to_thread(store.list, query)
    except AuditStoreError as exc:
        err.print(f"[bold red]audit store unavailable:[/] {escape(str(exc))}")
        return exitcodes.UNREACHABLE
    finally:
        store.close()
    if args.json:
        data = [r.model_dump(mode="json") for r in records]
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif records:
        console.print(audit_table(records, change_id=args.change))
    else:
        which = f" for change {args.change}" if args.change else ""
        console.print(f"no audit records{escape(which)}")
    return exitcodes.OK


COLUMNS = ("when", "action", "actor", "change", "guardrail", "report hash", "reason", "expires")
"""The table's columns; times are shown in UTC."""


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def audit_table(records: list[AuditRecord], *, change_id: str | None = None) -> Table:
    """Audit records as a table, one row each, oldest first."""
    title = f"Audit trail of {change_id}" if change_id else "Audit trail"
    table = Table(title=escape(title), title_justify="left")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for r in records:
        style = _ACTION_STYLE.get(r.action, "")
        table.add_row(
            _when(r.at),
            f"[{style}]{r.action.value}[/]" if style else r.action.value,
            escape(r.actor),
            escape(r.change_id),
            escape(r.guardrail),
            escape(r.report_hash),
            escape(r.reason),
            _when(r.expires_at),
        )
    return table
