"""``changeguard replay`` and ``changeguard history export``: prove new workflow code replays.

``replay`` replays recorded histories against the workflow code of this checkout, configured like
the worker (:mod:`worker.replay`): JSON files from a directory (``--dir``, default the committed
``tests/replay/histories``), the histories a visibility query lists on a Temporal server
(``--query``; alone, the last ``--limit`` ``GuardedChange`` and ``GuardrailGate`` runs), or the
replay gate fed by the live server (``--from-server``: a recent ``--sample`` of every workflow
type, ``--since`` ago and every running one, counted per type; ``--save DIR`` adds the histories
whose shape the corpus lacks). One line per history, then a summary. Exit 0 when every history
replays, 1 on any non-determinism or replay failure, 2 when there is nothing to replay (never a
vacuous pass), 4 when Temporal is unreachable.

``history export`` writes a workflow's history, fetched through the client (raw events, payloads
still encoded), as the JSON that ``replay --dir`` reads.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.markup import escape
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from cli import exitcodes
from cli.render import console, err, print_json
from worker.client import TemporalUnreachable, connect
from worker.replay import (
    DEFAULT_LIMIT,
    DEFAULT_QUERY,
    DEFAULT_SAMPLE,
    DEFAULT_SINCE,
    ReplayReport,
    ReplayResult,
    ServerReplay,
    history_files,
    replay_files,
    replay_from_server,
    replay_server_sample,
    save_new_shapes,
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
        "--from-server",
        action="store_true",
        help="the replay gate: download a recent sample of every workflow type from the server",
    )
    s.add_argument(
        "--query",
        nargs="?",
        const=DEFAULT_QUERY,
        default=None,
        metavar="Q",
        help="with --from-server: a visibility filter ANDed to each type's listing; alone: "
        "replay the runs this query lists (no query: the last --limit GuardedChange and "
        "GuardrailGate runs)",
    )
    s.add_argument(
        "--limit", type=_positive, default=DEFAULT_LIMIT, help="at most N runs from --query"
    )
    s.add_argument(
        "--sample",
        type=_positive,
        default=DEFAULT_SAMPLE,
        metavar="N",
        help=f"with --from-server: at most N runs per workflow type (default {DEFAULT_SAMPLE})",
    )
    s.add_argument(
        "--since",
        type=_duration,
        default=DEFAULT_SINCE,
        metavar="AGE",
        help="with --from-server: closed runs started within AGE (30m, 12h, 7d, 2w; 'all': any "
        "age); running runs always count (default 7d)",
    )
    s.add_argument(
        "--save",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --from-server: write each replayed history whose shape DIR lacks into DIR "
        "(e.g. tests/replay/histories) as server_<shape>__<type>__1.json",
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


_AGE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _duration(text: str) -> timedelta | None:
    if text.strip().lower() == "all":
        return None
    m = _AGE.fullmatch(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError("use e.g. 30m, 12h, 7d, 2w, or 'all'")
    return timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


async def _connected(settings: Settings) -> Client | int:
    """A client, or the exit code when Temporal does not answer (the reason printed)."""
    try:
        return await connect(settings)
    except TemporalUnreachable as exc:
        return exitcodes.fail("Temporal unreachable:", str(exc), exitcodes.UNREACHABLE)


async def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Replay a directory of histories, or a server's, and report each."""
    if args.dir is not None and args.query is not None:
        err.print("[red]--query reads from the server: it does not go with --dir[/]")
        return exitcodes.INVALID
    if args.save is not None and not args.from_server:
        err.print("[red]--save needs --from-server[/]")
        return exitcodes.INVALID
    if args.from_server:
        return await _from_server(args, settings)
    if args.query is not None:
        client = await _connected(settings)
        if isinstance(client, int):
            return client
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


async def _from_server(args: argparse.Namespace, settings: Settings) -> int:
    """The replay gate fed by the live server: sample, replay, count per type, save new shapes."""
    client = await _connected(settings)
    if isinstance(client, int):
        return client

    def progress(line: str) -> None:
        if not args.json:
            err.print(escape(line), highlight=False)

    since = "any age" if args.since is None else f"started within {args.since}"
    progress(
        f"replay gate: up to {args.sample} runs per workflow type from {settings.address} "
        f"(closed runs {since}, and every running one"
        + (f"; filter: {args.query})" if args.query else ")")
    )
    gate = await replay_server_sample(
        client, query=args.query, sample=args.sample, since=args.since, progress=progress
    )
    saved: list[Path] = []
    if args.save is not None and gate.report.results:
        ok = [h for h, r in zip(gate.histories, gate.report.results, strict=True) if r.ok]
        saved = save_new_shapes(ok, args.save, progress=progress)
    if args.json:
        print_json({**gate.to_dict(), "saved": [str(p) for p in saved]})
    else:
        _print_gate(gate, saved)
    if not gate.report.results:
        err.print(
            "[red]nothing to replay: the server holds no replayable history of any workflow type "
            "for this query; refusing to pass on an empty corpus[/]"
        )
        return exitcodes.INVALID
    return exitcodes.OK if gate.ok else exitcodes.UNDONE


def _print_gate(gate: ServerReplay, saved: list[Path]) -> None:
    for name, counts in gate.by_type().items():
        style = "red" if counts.failed else "green" if counts.replayed else "yellow"
        console.print(
            f"[{style}]{name:<14}[/] replayed {counts.replayed:>4}  skipped {counts.skipped:>4}  "
            f"failed {counts.failed:>4}",
            soft_wrap=True,
            highlight=False,
        )
        for r in gate.report.results:
            if r.workflow_type == name and not r.ok:
                console.print(f"  {_line(r)}", soft_wrap=True, highlight=False)
    reasons: dict[str, int] = {}
    for s in gate.skipped:
        reasons[s.reason] = reasons.get(s.reason, 0) + 1
    for reason, n in sorted(reasons.items()):
        console.print(f"  skipped {n}: {escape(reason)}", soft_wrap=True, highlight=False)
    report = gate.report
    failed = len(report.failed)
    summary = (
        f"{len(report.results)} histories replayed in {report.seconds:.2f}s "
        f"(downloaded in {gate.fetch_seconds:.2f}s): {len(report.results) - failed} ok, "
        f"{failed} failed, {len(gate.skipped)} skipped" + (f", {len(saved)} saved" if saved else "")
    )
    style = "bold green" if report.ok else "bold red"
    console.print(f"[{style}]{escape(summary)}[/]", soft_wrap=True, highlight=False)


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
    client = await _connected(settings)
    if isinstance(client, int):
        return client
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
