"""``changeguard replay`` and ``changeguard history export``: prove new workflow code replays.

``replay`` replays recorded histories against the workflow code of this checkout, configured like
the worker (:mod:`worker.replay`): JSON files from a directory (``--dir``, default the committed
``tests/replay/histories``), or the histories a visibility query lists on a Temporal server
(``--query``; alone, the last ``--limit`` ``GuardedChange`` and ``GuardrailGate`` runs). One line
per history, then a summary. Exit 0 when every history replays, 1 on any non-determinism or replay
failure, 2 when there is nothing to replay, 4 when Temporal is unreachable.

``history export`` writes a workflow's history, fetched through the client (raw events, payloads
still encoded), as the JSON that ``replay --dir`` reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.markup import escape
from temporalio.service import RPCError, RPCStatusCode

from cli import exitcodes
from cli.render import console, err, print_json
from worker.client import TemporalUnreachable, connect
from worker.replay import (
    DEFAULT_LIMIT,
    DEFAULT_QUERY,
    ReplayReport,
    ReplayResult,
    history_files,
    replay_files,
    replay_from_server,
)
from worker.settings import Settings

DEFAULT_DIR = Path("tests/replay/histories")


def add_parsers(sub: Any) -> None:
    """Add ``replay`` and ``history`` to the ``changeguard`` sub-command parsers."""
    s = sub.add_parser(
        "replay",
        help="replay recorded histories against this code (non-determinism check)",
        description="Replay histories against the current workflow code, configured like the "
        "worker. Exit 0 all replay, 1 any failure, 2 nothing to replay, 4 Temporal unreachable.",
    )
    source = s.add_mutually_exclusive_group()
    source.add_argument(
        "--dir",
        type=Path,
        default=None,
        help=f"a directory of JSON histories (default {DEFAULT_DIR})",
    )
    source.add_argument(
        "--query",
        nargs="?",
        const=DEFAULT_QUERY,
        default=None,
        metavar="Q",
        help="replay from the server: the runs this visibility query lists (alone: the last "
        "--limit GuardedChange and GuardrailGate runs)",
    )
    s.add_argument(
        "--limit", type=_positive, default=DEFAULT_LIMIT, help="at most N runs from --query"
    )
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.set_defaults(run=cmd_replay)

    h = sub.add_parser("history", help="workflow histories (export for replay)")
    actions = h.add_subparsers(dest="history_command", required=True, metavar="ACTION")
    e = actions.add_parser(
        "export",
        help="write a workflow's history as JSON that 'replay --dir' reads",
        description="Fetch a workflow's history through the client and write it as JSON.",
    )
    e.add_argument("id", help="the workflow id (a change id, or e.g. <change-id>/gate-1)")
    e.add_argument("--run-id", default=None, help="a specific run (default: the latest)")
    e.add_argument("--out", type=Path, default=None, help="the file to write (default: stdout)")
    e.set_defaults(run=cmd_history_export)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


async def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Replay a directory of histories, or a server's, and report each."""
    if args.query is not None:
        try:
            client = await connect(settings)
        except TemporalUnreachable as exc:
            err.print(f"[bold red]Temporal unreachable:[/] {escape(str(exc))}")
            return exitcodes.UNREACHABLE
        if not args.json:
            err.print(f"replaying at most {args.limit} runs matching: {escape(args.query)}")
        report = await replay_from_server(client, args.query, args.limit)
        if not report.results:
            err.print(f"[red]no workflow run matches {escape(args.query)!r}[/]")
            return exitcodes.INVALID
    else:
        directory = args.dir or DEFAULT_DIR
        if not directory.is_dir() or not history_files([directory]):
            err.print(f"[red]no JSON histories in {escape(str(directory))}[/]")
            return exitcodes.INVALID
        report = await replay_files([directory])
    _print(report, as_json=args.json)
    return exitcodes.OK if report.ok else exitcodes.UNDONE


def _print(report: ReplayReport, *, as_json: bool) -> None:
    if as_json:
        print_json(report.to_dict())
        return
    for r in report.results:
        console.print(_line(r), soft_wrap=True, highlight=False)
    failed = len(report.failed)
    summary = (
        f"{len(report.results)} histories replayed in {report.seconds:.2f}s: "
        f"{len(report.results) - failed} ok, {failed} failed"
    )
    style = "bold green" if report.ok else "bold red"
    console.print(f"[{style}]{escape(summary)}[/]", soft_wrap=True, highlight=False)


def _line(r: ReplayResult) -> str:
    where = "" if r.source == "server" else f"  {r.source}"
    head = f"{r.workflow_type or '?':<14} {r.workflow_id}  run {r.run_id or '?'}{where}"
    if r.ok:
        return f"[green]ok  [/]  {escape(head)}"
    kind = "non-determinism" if r.nondeterministic else "replay failed"
    why = f"{kind}: {r.mismatch or r.error}"
    return f"[bold red]FAIL[/]  {escape(head)}: {escape(why)}"


async def cmd_history_export(args: argparse.Namespace, settings: Settings) -> int:
    """Write one workflow's history as replayable JSON."""
    try:
        client = await connect(settings)
    except TemporalUnreachable as exc:
        err.print(f"[bold red]Temporal unreachable:[/] {escape(str(exc))}")
        return exitcodes.UNREACHABLE
    handle = client.get_workflow_handle(args.id, run_id=args.run_id)
    try:
        history = await handle.fetch_history()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            run = f" run {args.run_id}" if args.run_id else ""
            err.print(f"[red]no workflow {escape(args.id)!r}{escape(run)}[/]")
            return exitcodes.INVALID
        raise
    text = history.to_json() + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return exitcodes.OK
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    err.print(
        f"wrote {len(history.events)} events of {escape(args.id)} (run {history.run_id}) to "
        f"{escape(str(args.out))}; check it with: changeguard replay --dir "
        f"{escape(str(args.out.parent))}"
    )
    return exitcodes.OK
