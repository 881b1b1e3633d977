"""``changeguard report rules``: how each rule has judged changes, read from the change ledger.

What a platform team needs before turning a rule from ``shadow`` to ``enforce``: per rule, how
often it ran, how often it failed, how many changes it blocked, how many of those were approved,
how many it *would have* blocked in shadow mode, and its check latency (p50/p95). Everything comes
from the ledger (the audit store, SQLite or PostgreSQL), so it covers changes whose Temporal
histories have expired:

- each ``gate`` record lists every check it ran (``detail.checks``: rule, plug-in, status, mode,
  latency; written since this command exists) — evaluations, failures and latencies;
- a ``gate`` record that decided ``block`` names its enforced failures (``detail.failing``, in
  every record, old or new) — changes blocked;
- ``approval`` records name the rule they approved (``guardrail``) — changes approved.

Counts of *changes* (blocked, approved, would have blocked) count each change once, however many
times its gate ran; evaluations and failures count every check run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.markup import escape
from rich.table import Table

from activities.audit import AuditStoreError
from cli import exitcodes
from cli.audit import _open
from cli.render import console, err
from worker.settings import Settings
from workflows.models import AuditAction, AuditQuery, AuditRecord
from workflows.types import parse_duration

DEFAULT_SINCE = "30d"
LEDGER_LIMIT = 100_000
"""The most recent records read (gate and approval records only)."""
_FAILED = ("fail", "error")


@dataclass
class RuleStats:
    """One rule's record over the period."""

    rule: str
    guardrails: list[str] = field(default_factory=list)
    evaluations: int = 0
    failures: int = 0
    waits: int = 0
    shadow_evaluations: int = 0
    blocked: int = 0
    approved: int = 0
    would_have_blocked: int = 0
    p50_ms: int | None = None
    p95_ms: int | None = None


def percentile(samples: list[int], p: float) -> int | None:
    """The nearest-rank percentile of ``samples`` (None when there are none)."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def rule_stats(records: Iterable[AuditRecord]) -> list[RuleStats]:
    """Per-rule figures from ``gate`` and ``approval`` ledger records, by rule id."""
    stats: dict[str, RuleStats] = {}
    latencies: dict[str, list[int]] = {}
    blocked: dict[str, set[str]] = {}
    approved: dict[str, set[str]] = {}
    shadow: dict[str, set[str]] = {}

    def of(rule: str) -> RuleStats:
        return stats.setdefault(rule, RuleStats(rule=rule))

    for r in records:
        if r.action is AuditAction.APPROVAL and r.guardrail:
            of(r.guardrail)
            approved.setdefault(r.guardrail, set()).add(r.change_id)
            continue
        if r.action is not AuditAction.GATE:
            continue
        checks = r.detail.get("checks")
        for c in checks if isinstance(checks, list) else []:
            if not isinstance(c, dict) or not isinstance(c.get("rule"), str):
                continue
            s = of(c["rule"])
            guardrail = c.get("guardrail")
            if isinstance(guardrail, str) and guardrail not in s.guardrails:
                s.guardrails.append(guardrail)
            s.evaluations += 1
            status = c.get("status")
            s.failures += status in _FAILED
            s.waits += status == "wait"
            if c.get("mode") == "shadow":
                s.shadow_evaluations += 1
                if status in _FAILED:
                    shadow.setdefault(s.rule, set()).add(r.change_id)
            ms = c.get("ms")
            if isinstance(ms, int) and not isinstance(ms, bool):
                latencies.setdefault(s.rule, []).append(ms)
        failing = r.detail.get("failing")
        if r.detail.get("decision") == "block" and isinstance(failing, list):
            for rule in failing:
                if isinstance(rule, str):
                    of(rule)
                    blocked.setdefault(rule, set()).add(r.change_id)
    for rule, s in stats.items():
        s.blocked = len(blocked.get(rule, ()))
        s.approved = len(approved.get(rule, ()))
        s.would_have_blocked = len(shadow.get(rule, ()))
        s.p50_ms = percentile(latencies.get(rule, []), 50)
        s.p95_ms = percentile(latencies.get(rule, []), 95)
    return sorted(stats.values(), key=lambda s: s.rule)


def parse_since(text: str, now: datetime) -> datetime:
    """``30d``, ``12h``, ``1h30m`` before ``now``, or an ISO date or time (UTC when naive).

    Raises:
        ValueError: neither form; the message shows both.
    """
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither a duration (30d, 12h, 1h30m) nor an ISO date or time "
            "(2026-11-01, 2026-11-01T09:00:00+01:00)"
        ) from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add ``report rules`` to the ``changeguard`` parser."""
    p = sub.add_parser(
        "report",
        help="reports from the change ledger (report rules: how each rule has judged changes)",
        description="Reports read from the change ledger (CHANGEGUARD_AUDIT_URL).",
    )
    kinds = p.add_subparsers(dest="report_command", metavar="{rules}", required=True)
    r = kinds.add_parser(
        "rules",
        help="per rule: evaluations, failures, blocked, approved, would have blocked, latency",
        description=(
            "Per rule, from the ledger's gate and approval records: evaluations, failures, "
            "waits, changes blocked, changes approved, changes a shadow rule would have "
            "blocked, and p50/p95 check latency."
        ),
    )
    r.add_argument(
        "--since",
        default=DEFAULT_SINCE,
        metavar="WHEN",
        help=f"a duration back from now (30d, 12h) or an ISO date (default {DEFAULT_SINCE})",
    )
    r.add_argument("--json", action="store_true", help="print one JSON document")
    r.set_defaults(run=cmd_report_rules)
    return p


async def cmd_report_rules(args: argparse.Namespace, settings: Settings) -> int:
    """Print the rule report.

    Returns:
        0 reported (even no rules), 2 a bad ``--since`` or audit URL, 4 the store is unreachable.
    """
    now = datetime.now(UTC)
    try:
        since = parse_since(args.since, now)
    except ValueError as exc:
        err.print(f"[bold red]invalid input:[/] {escape(str(exc))}")
        return exitcodes.INVALID
    store = await _open(settings)
    if isinstance(store, int):
        return store
    query = AuditQuery(
        limit=LEDGER_LIMIT, since=since, actions=[AuditAction.GATE, AuditAction.APPROVAL]
    )
    try:
        records = await asyncio.to_thread(store.list, query)
    except AuditStoreError as exc:
        err.print(f"[bold red]audit store unavailable:[/] {escape(str(exc))}")
        return exitcodes.UNREACHABLE
    finally:
        store.close()
    rules = rule_stats(records)
    if args.json:
        doc: dict[str, Any] = {
            "since": since.isoformat(),
            "until": now.isoformat(),
            "records": len(records),
            "truncated": len(records) >= LEDGER_LIMIT,
            "rules": [asdict(s) for s in rules],
        }
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return exitcodes.OK
    if not rules:
        console.print(
            f"no gate decisions in the ledger since {since.isoformat(timespec='seconds')}"
        )
        return exitcodes.OK
    console.print(rules_table(rules, since=since))
    return exitcodes.OK


def _ms(value: int | None) -> str:
    return "-" if value is None else f"{value:,} ms"


def rules_table(rules: list[RuleStats], *, since: datetime) -> Table:
    """The rule report as a table."""
    table = Table(title=f"rules since {since.isoformat(timespec='minutes')}", title_justify="left")
    for name, justify in (
        ("rule", "left"),
        ("evaluations", "right"),
        ("failures", "right"),
        ("blocked", "right"),
        ("approved", "right"),
        ("shadow would block", "right"),
        ("p50", "right"),
        ("p95", "right"),
    ):
        table.add_column(name, justify=justify, no_wrap=name == "rule")  # type: ignore[arg-type]
    for s in rules:
        label = (
            s.rule if s.guardrails in ([], [s.rule]) else f"{s.rule} ({', '.join(s.guardrails)})"
        )
        table.add_row(
            escape(label),
            str(s.evaluations),
            str(s.failures),
            str(s.blocked),
            str(s.approved),
            str(s.would_have_blocked) if s.shadow_evaluations else "-",
            _ms(s.p50_ms),
            _ms(s.p95_ms),
        )
    return table
