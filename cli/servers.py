"""``changeguard worker``, ``dev`` and ``demo``: the commands that run servers, and their versioning."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from temporalio.client import Client

import changeguard
from cli import exitcodes
from cli.changefile import load_change
from cli.changes import start_change
from cli.render import console
from worker.settings import DEPLOYMENT, Settings, SettingsError


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
        return exitcodes.fail("invalid settings:", str(exc))
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
        return exitcodes.fail("invalid settings:", str(exc))
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


def versioning_arguments(s: argparse.ArgumentParser, *, set_current: str) -> None:
    """The Worker Deployment Versioning flags of ``worker`` and ``dev``."""
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
