"""``changeguard audit``: the audit trail and change ledger, read from the store itself.

The store outlives workflow histories (they have a retention period), so these commands work for
changes Temporal has forgotten, and without a Temporal server at all:

- ``changeguard audit`` lists records, newest ``--limit`` of them, oldest first;
- ``changeguard audit --change ID`` tells one change's story in order: started (requester, request
  digest, bundle hash), gate decisions, approvals and refusals, mutations and compensations that
  took effect, and the outcome;
- ``changeguard audit verify`` walks the hash chain: exit 0 intact, 1 broken (naming the first
  record that does not fit), 2 bad arguments, 4 store unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from activities.audit import (
    AuditEntry,
    AuditStore,
    AuditStoreError,
    AuditUrlError,
    open_audit_store,
)
from activities.audit_chain import ChainReport, verify_chain
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
    AuditAction.STARTED: "bold cyan",
    AuditAction.REFUSED: "bold red",
    AuditAction.REFUSED_ACTION: "red",
    AuditAction.GATE: "cyan",
    AuditAction.MUTATION: "blue",
    AuditAction.COMPENSATION: "magenta",
    AuditAction.OUTCOME: "bold",
}
_HASH = re.compile(r"^[0-9a-f]{64}$")
PROGRESS_FROM = 10_000
"""``verify`` reports progress on stderr for stores holding more records than this."""

T = TypeVar("T")


@dataclass(frozen=True)
class Read(Generic[T]):
    """What :func:`read_store` read (kept apart from an exit code, which is an ``int`` too)."""

    value: T


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``audit`` subcommand (and ``audit verify``) to the ``changeguard`` parser."""
    p = sub.add_parser(
        "audit",
        help="the audit trail and change ledger: list records, tell a change's story, verify",
        description=(
            "List audit records, oldest first, from the store CHANGEGUARD_AUDIT_URL names; with "
            "--change, tell that change's story. 'audit verify' checks the hash chain."
        ),
    )
    p.add_argument("--change", metavar="ID", default=None, help="tell this change's story")
    p.add_argument(
        "--limit", type=int, default=1000, help="at most this many, the most recent (default 1000)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON document (a list)")
    p.set_defaults(run=cmd_audit)
    actions = p.add_subparsers(dest="audit_command", metavar="{verify}")
    v = actions.add_parser(
        "verify",
        help="check the audit trail's hash chain (exit 0 intact, 1 broken)",
        description=(
            "Walk every record in storage order and check its hash and its link to the record "
            "before it. Exit 0 intact, 1 broken (the first record that does not fit is named), "
            "2 bad arguments, 4 store unreachable."
        ),
    )
    v.add_argument(
        "--head",
        metavar="HASH",
        default=None,
        help="a record hash noted earlier (a chain head): it must still be in the chain",
    )
    v.add_argument("--json", action="store_true", help="print the result as one JSON document")
    v.set_defaults(run=cmd_verify)
    return p


async def _open(settings: Settings) -> AuditStore | int:
    """The store, or the exit code (and a message) when it cannot be opened."""
    try:
        return await asyncio.to_thread(open_audit_store, settings.audit_url)
    except AuditUrlError as exc:
        return exitcodes.fail("invalid audit store URL:", str(exc))
    except AuditStoreError as exc:
        return exitcodes.fail("audit store unavailable:", str(exc), exitcodes.UNREACHABLE)


async def read_store(settings: Settings, read: Callable[[AuditStore], T]) -> Read[T] | int:
    """``read(store)`` in a thread, on the store the settings name, closed afterwards.

    Returns:
        What ``read`` returned, in a :class:`Read`; or the exit code (a message printed) when the
        store cannot be opened or read.
    """
    store = await _open(settings)
    if isinstance(store, int):
        return store
    try:
        return Read(await asyncio.to_thread(read, store))
    except AuditStoreError as exc:
        return exitcodes.fail("audit store unavailable:", str(exc), exitcodes.UNREACHABLE)
    finally:
        store.close()


async def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    """List audit records as a table, tell one change's story, or print one JSON list.

    Returns:
        0 when listed (even none), 2 for a bad audit URL or limit, 4 when the store is unreachable.
    """
    try:
        query = AuditQuery(change_id=args.change, limit=getattr(args, "limit", 1000))
    except ValidationError as exc:
        return exitcodes.fail("invalid input:", str(exc))
    read = await read_store(settings, lambda store: store.entries(query))
    if isinstance(read, int):
        return read
    entries = read.value
    if args.json:
        data = [e.as_json() for e in entries]
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    elif not entries:
        which = f" for change {args.change}" if args.change else ""
        console.print(f"no audit records{escape(which)}")
    elif args.change:
        console.print(story_table(entries, change_id=args.change))
    else:
        console.print(audit_table([e.record for e in entries], change_id=args.change))
    return exitcodes.OK


async def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Verify the audit store's hash chain.

    Returns:
        0 intact, 1 broken, 2 bad arguments or URL, 4 store unreachable.
    """
    head = args.head.strip().lower() if args.head else None
    if head is not None and not _HASH.match(head):
        return exitcodes.fail("invalid input:", "--head must be a record hash (64 hex characters)")
    read = await read_store(settings, lambda store: _verify(store, head, as_json=args.json))
    if isinstance(read, int):
        return read
    report = read.value
    if args.json:
        sys.stdout.write(json.dumps(report.as_json(), indent=2, sort_keys=True) + "\n")
    else:
        _print_report(report)
    return exitcodes.OK if report.intact else exitcodes.UNDONE


def _verify(store: AuditStore, head: str | None, *, as_json: bool) -> ChainReport:
    total = store.count()

    def progress(done: int) -> None:
        err.print(f"verified {done:,} of {total:,} records…", highlight=False)

    return verify_chain(
        store.chain(), expect_head=head, progress=progress if total > PROGRESS_FROM else None
    )


def _print_report(report: ChainReport) -> None:
    unchained = (
        f" ({report.unchained:,} from before the chain began, not verifiable)"
        if report.unchained
        else ""
    )
    if report.intact:
        head = f"head {report.head_hash} (#{report.head_seq})" if report.head_hash else "no head"
        console.print(
            Text.assemble(
                ("audit chain intact", "bold green"),
                f": {report.checked:,} records{unchained}, {head}",
            ),
            soft_wrap=True,
        )
        return
    console.print(
        Text.assemble(
            ("audit chain broken", "bold red"), f": {report.checked:,} records checked{unchained}"
        )
    )
    if report.breaks:
        first = report.breaks[0]
        console.print(Text(f"first bad record: {first.problem}"), soft_wrap=True)
        for b in report.breaks[1:]:
            console.print(Text(f"  also: {b.problem}", style="dim"))
        if report.more_breaks:
            console.print(Text(f"  … and {report.more_breaks:,} more", style="dim"))
    if report.head_found is False:
        console.print(
            Text(
                "the head given with --head is not in the chain: records at its end were "
                "removed, or this is another store"
            )
        )


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

COLUMNS = ("when", "action", "actor", "change", "guardrail", "report hash", "reason", "expires")
"""The listing's columns; times are shown in UTC."""


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


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    text = "".join(c if c.isprintable() else "?" for c in text[: limit * 2])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _items(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_short(v, 60) for v in value) or "none"
    return _short(value)


def _story(r: AuditRecord) -> tuple[str, list[str]]:
    """What a record says, in words, and the detail keys that says (the rest are listed after)."""
    d = r.detail
    a = r.action
    if a is AuditAction.STARTED:
        parts = [f"requested by {r.actor}"]
        if d.get("team"):
            parts.append(f"team {_short(d['team'])}")
        parts.append(f"request {_short(d.get('request_digest') or '?')}")
        parts.append(f"bundle {r.policy_hash or 'none'}")
        parts.append(f"run {_short(r.run_id or d.get('run_id') or '?')}")
        return " · ".join(parts), ["team", "request_digest", "run_id"]
    if a is AuditAction.GATE:
        failing = d.get("failing_rules", d.get("failing"))
        parts = [_short(d.get("decision", "decided"))]
        if r.report_hash:
            parts.append(f"report {r.report_hash}")
        if failing is not None:
            parts.append(f"failing: {_items(failing)}")
        if r.policy_hash:
            parts.append(f"policy {r.policy_hash}")
        return " · ".join(parts), ["decision", "failing_rules", "failing"]
    if a in (AuditAction.MUTATION, AuditAction.COMPENSATION):
        verb = "applied to" if a is AuditAction.MUTATION else "reverted on"
        parts = [f"{verb} {_short(d.get('target', '?'))}"]
        if d.get("idempotency_key"):
            parts.append(f"key {_short(d['idempotency_key'])}")
        if r.reason:
            parts.append(_short(r.reason, 200))
        if d.get("by_earlier_attempt"):
            parts.append("(by an earlier attempt)")
        return " · ".join(parts), ["target", "idempotency_key", "by_earlier_attempt"]
    if a is AuditAction.OUTCOME:
        parts = [_short(d.get("outcome", "ended"))]
        if r.reason:
            parts.append(_short(r.reason, 300))
        counts = [f"{k} {d[k]}" for k in ("applied", "reverted") if k in d]
        if counts:
            parts.append(", ".join(counts))
        return " · ".join(parts), ["outcome", "applied", "reverted"]
    if a is AuditAction.APPROVAL:
        parts = [f"approved {r.guardrail or '?'}"]
        if r.report_hash:
            parts.append(f"report {r.report_hash}")
        if r.expires_at is not None:
            parts.append(f"until {_when(r.expires_at)}")
        if r.reason:
            parts.append(f"“{_short(r.reason, 300)}”")
        return " · ".join(parts), []
    parts = [p for p in (r.guardrail, _short(r.reason, 300) if r.reason else "") if p]
    if r.report_hash:
        parts.append(f"report {r.report_hash}")
    return " · ".join(parts) or a.value, []


def story_line(r: AuditRecord) -> Text:
    """One record of a change's story as text: what it says, then any other detail."""
    said, shown = _story(r)
    text = Text(said)
    rest = [(k, v) for k, v in r.detail.items() if k not in shown and v not in (None, "", [], {})]
    for k, v in rest[:12]:
        text.append(f"\n{_short(k, 40)}: ", style="dim")
        text.append(_short(v))
    if len(rest) > 12:
        text.append(f"\n… {len(rest) - 12} more detail field(s)", style="dim")
    return text


def story_table(entries: list[AuditEntry], *, change_id: str) -> Table:
    """A change's story from the ledger, in order: one row per record."""
    records = [e.record for e in entries]
    started = next((r for r in records if r.action is AuditAction.STARTED), None)
    outcome = next((r for r in reversed(records) if r.action is AuditAction.OUTCOME), None)
    caption = [f"{len(records)} record(s) from the audit store"]
    if started is None:
        caption.append("no 'started' record (written before the ledger recorded starts?)")
    if outcome is None:
        caption.append("no outcome yet")
    table = Table(
        title=Text(f"The story of change {change_id}", style="bold"),
        title_justify="left",
        caption=" · ".join(caption),
        caption_justify="left",
        show_lines=False,
        expand=False,
    )
    table.add_column("when (UTC)", no_wrap=True)
    table.add_column("what", no_wrap=True)
    table.add_column("who", overflow="fold")
    table.add_column("details", overflow="fold", ratio=1)
    for r in records:
        table.add_row(
            _when(r.at),
            Text(r.action.value, style=_ACTION_STYLE.get(r.action, "")),
            Text(_short(r.actor, 60)),
            story_line(r),
        )
    return table
