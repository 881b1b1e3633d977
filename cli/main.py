"""The ``changeguard`` command: its parser and entry. Exit codes are contract: see :mod:`cli.exitcodes`.

The commands live by group: :mod:`cli.changes` (start, checks, status), :mod:`cli.actions`
(recheck, approve, abort, rollback, resume), :mod:`cli.servers` (worker, dev, demo),
:mod:`cli.audit`, :mod:`cli.report`, :mod:`cli.replay`. Their entry points are re-exported here.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from rich.markup import escape
from temporalio.service import RPCError, RPCStatusCode

from activities.audit import AuditStoreError
from changeguard.client import NOT_READY_WAIT, not_ready
from cli import exitcodes, signing
from cli import replay as replay_cli
from cli.actions import cmd_approve, cmd_operator, cmd_recheck
from cli.audit import add_parser as add_audit_parser
from cli.changefile import ChangeFileError
from cli.changes import (
    POLL_INTERVAL,
    cmd_checks,
    cmd_start,
    cmd_status,
    follow,
    pending_work,
    start_change,
)
from cli.exitcodes import fail
from cli.render import err
from cli.report import add_parser as add_report_parser
from cli.servers import cmd_demo, cmd_dev, cmd_worker, versioning_arguments, with_versioning
from guardrails.bundle import BundleError
from worker import telemetry, waiting
from worker.client import SearchAttributesMissing, TemporalUnreachable
from worker.devserver import DevServerError
from worker.exit import exit_now
from worker.main import DeploymentError, PolicyMissing
from worker.settings import Settings, SettingsError

__all__ = [
    "POLL_INTERVAL",
    "cmd_approve",
    "cmd_checks",
    "cmd_demo",
    "cmd_dev",
    "cmd_operator",
    "cmd_recheck",
    "cmd_start",
    "cmd_status",
    "cmd_worker",
    "entry",
    "follow",
    "main",
    "parser",
    "pending_work",
    "start_change",
    "with_versioning",
]


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
    versioning_arguments(s, set_current="default: CHANGEGUARD_SET_CURRENT, else no")
    s.set_defaults(run=cmd_worker)

    s = sub.add_parser("dev", help="embedded dev server + Web UI + worker + demo fleet")
    s.add_argument("--port", type=int, default=7233)
    s.add_argument("--ui-port", type=int, default=8233)
    s.add_argument("--db", default=".changeguard/temporal.db")
    s.add_argument("--fleet-port", type=int, default=8800)
    versioning_arguments(s, set_current="default: yes, when versioned")
    s.set_defaults(run=cmd_dev)

    s = sub.add_parser("demo", help="run the demo scenario on a fresh embedded stack")
    s.add_argument("--keep-running", action="store_true")
    s.set_defaults(run=cmd_demo)

    replay_cli.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``changeguard`` command."""
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        telemetry.trace_exporters()  # a bad OTEL_* is refused here, like any other setting
        waiting.interval_from_env()
    except SettingsError as exc:
        return fail("invalid settings:", str(exc))
    from worker.logging import configure

    quiet = args.command not in ("worker", "dev")
    configure(settings.log_format, logging.WARNING if quiet else logging.INFO)
    runner: Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]] = args.run
    try:
        return asyncio.run(runner(args, settings))
    except ChangeFileError as exc:
        return fail("invalid change file", str(exc))
    except SearchAttributesMissing as exc:
        return fail("cannot run:", str(exc))
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND and getattr(args, "id", None):
            err.print(f"[red]no running change with id {args.id!r}:[/] {escape(exc.message)}")
            return exitcodes.INVALID
        if not_ready(exc):
            return fail(
                "the change cannot answer now:",
                f"{exc.message} (for {NOT_READY_WAIT:g}s): its latest workflow task failed and is "
                "being retried; nothing was sent to it. A burst of large signals causes this for a "
                "moment: try again. If it lasts, the change's history in the Web UI shows "
                "WorkflowTaskFailed and its cause (e.g. a worker whose code cannot replay it)",
                exitcodes.UNREACHABLE,
            )
        raise
    except DevServerError as exc:
        return fail("cannot start the dev server:", str(exc))
    except DeploymentError as exc:
        return fail("worker versioning:", str(exc))
    except PolicyMissing as exc:
        return fail("cannot start the worker:", exc.problems[0])
    except BundleError as exc:
        return fail("cannot start the worker:", str(exc))
    except AuditStoreError as exc:
        fix = (
            "fix CHANGEGUARD_AUDIT_URL (sqlite:///PATH or postgresql://USER@HOST:PORT/DATABASE) "
            "or start the database"
        )
        return fail("audit store unusable:", f"{exc}; {fix}", exitcodes.UNREACHABLE)
    except TemporalUnreachable as exc:
        return fail("Temporal unreachable:", str(exc), exitcodes.UNREACHABLE)
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    """Console-script entry: run, then leave through :func:`worker.exit.exit_now`.

    The SDK's exit-time crash would otherwise turn a correct run into exit code -11.
    """
    exit_now(main())


if __name__ == "__main__":
    entry()
