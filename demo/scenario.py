"""The demo scenario: a real change against the demo fleet on a fresh embedded stack.

Run by ``changeguard demo`` (and ``make demo``). It starts the dev server (in memory), the fleet
(a fresh SQLite file) and a worker, rolls a new version out to every host through the guardrail gate,
prints the report, and checks the fleet's own ledger: every host deployed exactly once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
from rich.console import Console
from rich.table import Table
from temporalio.client import Client

from demo.stack import DevStack
from worker.settings import Settings

CHANGES = Path(__file__).parent / "changes"
console = Console()

Follow = Callable[[Client, str, Settings], Awaitable[int]]
Load = Callable[[Path], object]


async def run_demo(
    *, follow: Follow, start: Callable[..., Awaitable[str]], keep_running: bool
) -> int:
    """Run the scenario; return the exit code (0 when every step behaved as expected).

    Args:
        follow: prints a change's progress until it ends; returns its exit code.
        start: starts a change file on a client (``start(client, path, settings, change_id)``).
        keep_running: leave the stack up afterwards for exploring, until Ctrl-C.
    """
    began = time.monotonic()
    with TemporaryDirectory(prefix="changeguard-demo-") as tmp:
        stack = DevStack(db=None, fleet_db=Path(tmp) / "fleet.db", state_dir=Path(tmp))
        async with stack:
            assert stack.client is not None
            console.print(stack.banner().replace("Press Ctrl-C to stop.", ""))
            console.rule("[bold]A good version rolls out in waves through the gate")
            change_id = f"demo-good-{uuid.uuid4().hex[:6]}"
            await start(stack.client, CHANGES / "deploy-good.yaml", stack.settings, change_id)
            code = await follow(stack.client, change_id, stack.settings)
            ok = code == 0 and await _ledger_ok(stack.fleet.url, change_id, "1.1.0")
            console.rule()
            verdict = "[bold green]demo passed[/]" if ok else "[bold red]demo failed[/]"
            console.print(f"{verdict} in {time.monotonic() - began:.1f}s")
            if keep_running:
                console.print("Still running for exploring; Ctrl-C stops everything.")
                await stack.wait_for_interrupt()
    return 0 if ok else 1


async def _ledger_ok(fleet_url: str, change_id: str, version: str) -> bool:
    """Check the fleet's ledger: every host deployed exactly once by this change, to ``version``."""
    async with httpx.AsyncClient(base_url=fleet_url) as http:
        hosts = (await http.get("/hosts")).json()
        ledger = (await http.get("/deploys")).json()
    ours = [d for d in ledger if d["idempotency_key"].startswith(f"{change_id}:")]
    table = Table(title="The fleet's own ledger")
    for col in ("host", "version now", "deploys by this change"):
        table.add_column(col)
    ok = True
    for h in hosts:
        n = sum(1 for d in ours if d["host"] == h["id"])
        good = n == 1 and h["version"] == version
        ok &= good
        table.add_row(h["id"], h["version"], f"[{'green' if good else 'red'}]{n}[/]")
    console.print(table)
    return ok
