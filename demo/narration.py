"""What the demo tells: narration, the operator's commands, gate reports and fleet tables.

The gate report is the one report view (:mod:`workflows.report_view`) laid out for a terminal; the
Web UI's markdown and the CLI's table format the same rows.
"""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from workflows.models import CheckStatus, Decision, GuardrailReport
from workflows.report_view import NO_CHECKS, report_view

console = Console(highlight=False)


def say(text: str) -> None:
    """Narrate, in plain words."""
    console.print(text)


def operator(command: str) -> None:
    """Show what an operator types (the demo sends the same signal or update itself)."""
    console.print(f"  [bold cyan]$[/] [cyan]{escape(command)}[/]")


_DECISION_STYLE = {
    Decision.PROCEED: "bold green",
    Decision.WAIT: "bold yellow",
    Decision.BLOCK: "bold red",
}
_CHECK_MARK = {
    CheckStatus.PASS: ("✓", "green"),
    CheckStatus.FAIL: ("✗", "bold red"),
    CheckStatus.WAIT: ("…", "yellow"),
    CheckStatus.ERROR: ("!", "bold magenta"),
}


def show_report(report: GuardrailReport | None) -> None:
    """Print a gate report: each check, and for each failure why, the fix, who owns it, who may approve.

    The rows are the report view's (:func:`workflows.report_view.report_view`), as in the Web UI
    and the CLI.
    """
    if report is None:
        return
    view = report_view(report)
    console.print(
        Text.assemble(
            "  gate report ",
            (view.report_hash, "bold"),
            " decided ",
            (view.decision.value, _DECISION_STYLE[view.decision]),
            (f"  (platform bundle {view.bundle_hash})", "dim"),
        )
    )
    if view.bundle_warning:
        console.print(Text(f"  policy bundle: {view.bundle_warning}", style="bold yellow"))
    if view.scheduled():
        console.print(Text(f"  {view.scheduled()}", style="yellow"))
    if not view.rows:
        console.print(Text(f"    {NO_CHECKS}", style="dim"))
        return
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(ratio=1)
    for row in view.rows:
        mark, mark_style = _CHECK_MARK[row.status]
        status = row.status.value + (" (shadow)" if row.shadow else "")
        grid.add_row(
            Text(f"    {mark}", style=mark_style),
            Text(row.label, style="bold"),
            Text.assemble((status, mark_style), f"  {row.reason}"),
        )
        if row.passing:
            continue
        grid.add_row("", "", Text.assemble(("fix ", "dim"), row.remedy))
        grid.add_row(
            "", "", Text(f"owner {row.owner} · who may approve: {row.who_may_approve}", style="dim")
        )
    console.print(grid)


def fleet_table(
    title: str,
    before: Mapping[str, str],
    after: Mapping[str, str],
    counts: Mapping[str, int] | None,
) -> None:
    """Print each host's version before and now (and, given ``counts``, this change's deploys)."""
    table = Table(title=title, title_justify="left")
    for column in ("host", "before", "now", *(["deploys by this change"] if counts else [])):
        table.add_column(column)
    for host, version in after.items():
        same = version == before.get(host)
        row: list[str | Text] = [
            host,
            before.get(host, "?"),
            Text(version, style="" if same else "bold"),
        ]
        table.add_row(*row, *([str(counts.get(host, 0))] if counts is not None else []))
    console.print(table)
