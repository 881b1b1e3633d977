"""Everything ``changeguard dev`` and the demo run locally: dev server, Web UI, fleet, worker."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from types import TracebackType

from temporalio.client import Client
from temporalio.worker import Worker

from demo.fleet import FleetServer
from worker.client import connect
from worker.devserver import DevServer
from worker.main import build_worker
from worker.settings import Settings


class DevStack:
    """The embedded Temporal dev server (with UI), the demo fleet and one worker.

    Args:
        port: gRPC port of the dev server.
        ui_port: Web UI port.
        db: the dev server's SQLite file (``None``: in memory).
        fleet_port: port of the demo fleet service (0: any free port).
        fleet_db: the fleet's SQLite file.
        state_dir: where logs go.
    """

    def __init__(
        self,
        *,
        port: int = 7233,
        ui_port: int = 8233,
        db: Path | None = Path(".changeguard/temporal.db"),
        fleet_port: int = 8800,
        fleet_db: Path = Path(".changeguard/fleet.db"),
        state_dir: Path = Path(".changeguard"),
    ) -> None:
        self.server = DevServer(
            port=port, ui_port=ui_port, db=db, log_file=state_dir / "temporal.log"
        )
        self.fleet = FleetServer(fleet_db, port=fleet_port)
        self.settings = Settings.from_env(
            env={},
            connect={"target_host": self.server.address, "namespace": "default"},
            ui_url=self.server.ui_url,
        )
        self.client: Client | None = None
        self._worker: Worker | None = None

    async def __aenter__(self) -> DevStack:
        await asyncio.to_thread(self.server.start)
        try:
            await asyncio.to_thread(self.fleet.start)
            self.client = await connect(self.settings)
            self._worker = build_worker(self.client, self.settings)
            await self._worker.__aenter__()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._worker is not None:
            await self._worker.__aexit__(None, None, None)
            self._worker = None
        await asyncio.to_thread(self.fleet.stop)
        await asyncio.to_thread(self.server.stop)

    def banner(self) -> str:
        """What is running where (rich markup)."""
        return (
            "[bold green]changeguard dev is up[/]\n"
            f"  Temporal      {self.server.address} (namespace default)\n"
            f"  Web UI        {self.server.ui_url}\n"
            f"  Demo fleet    {self.fleet.url}\n"
            f"  Worker        task queue {self.settings.task_queue}\n"
            "Press Ctrl-C to stop."
        )

    async def wait_for_interrupt(self) -> None:
        """Block until SIGINT or SIGTERM."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
