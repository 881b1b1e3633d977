"""Everything ``changeguard dev`` and the demo run locally: dev server, Web UI, fleet, worker.

The worker holds the platform's policy bundle: ``demo/platform`` unless told otherwise, watched
for edits. Also the demo's :class:`StandIns`: the two outside services its story needs besides the
fleet.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from demo.fleet import FleetServer
from guardrails.bundle import BundleHolder, bundle_files
from worker.client import connect
from worker.devserver import DevServer
from worker.main import build_worker
from worker.registry import Plugins
from worker.settings import Settings

DEMO_BUNDLE = Path(__file__).parent / "platform"
"""The demo's platform bundle: what ``changeguard dev`` and ``changeguard demo`` workers hold."""
FLEET_IN_FILES = "http://127.0.0.1:8800"
"""The fleet's address as the demo's files spell it (the default ``--fleet-port``)."""


def copy_bundle(src: Path, dest: Path, replacements: dict[str, str]) -> Path:
    """Copy a bundle (file or directory) to ``dest``, replacing text (ports) in every file."""
    if dest.exists():
        shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
    dest.mkdir(parents=True)
    for file in bundle_files(src):
        text = file.read_text()
        for old, new in replacements.items():
            text = text.replace(old, new)
        (dest / file.name).write_text(text)
    return dest


class DevStack:
    """The embedded Temporal dev server (with UI), the demo fleet and one worker.

    Args:
        port: gRPC port of the dev server.
        ui_port: Web UI port.
        db: the dev server's SQLite file (``None``: in memory).
        fleet_port: port of the demo fleet service (0: any free port).
        fleet_db: the fleet's SQLite file.
        state_dir: where logs go.
        audit_url: the worker's audit store (default: the settings' default, under ``.changeguard``).
        directory: the worker's operator directory spec, e.g. ``yaml:demo/operators.yaml``.
        pagers: each pager's params by name, e.g. ``{"webhook": {"url": ...}}``.
        policy: the platform bundle the worker holds (a file or directory; default: the demo's,
            with the fleet's address put in when ``fleet_port`` is not 8800).
        bundle_interval: seconds between the worker's looks at the bundle's files.
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
        audit_url: str | None = None,
        directory: str | None = None,
        pagers: dict[str, dict[str, Any]] | None = None,
        policy: Path | None = None,
        bundle_interval: float = 2.0,
    ) -> None:
        self.state_dir = state_dir
        self.policy = policy or DEMO_BUNDLE
        self.bundle_interval = bundle_interval
        self.bundle: BundleHolder | None = None
        self.server = DevServer(
            port=port, ui_port=ui_port, db=db, log_file=state_dir / "temporal.log"
        )
        self.fleet = FleetServer(fleet_db, port=fleet_port)
        overrides: dict[str, Any] = {
            "connect": {"target_host": self.server.address, "namespace": "default"},
            "ui_url": self.server.ui_url,
        }
        if audit_url is not None:
            overrides["audit_url"] = audit_url
        if directory is not None:
            overrides["directory"] = directory
        if pagers is not None:
            overrides["pagers"] = pagers
        self.settings = Settings.from_env(env={}, **overrides)
        self.client: Client | None = None
        self._worker: Worker | None = None

    def _load_bundle(self) -> BundleHolder:
        policy = self.policy
        if policy.resolve() == DEMO_BUNDLE.resolve() and self.fleet.port != 8800:
            url = f"http://127.0.0.1:{self.fleet.port}"
            policy = copy_bundle(policy, self.state_dir / "platform", {FLEET_IN_FILES: url})
        holder = BundleHolder.load(policy, registry=self._plugins.guardrails)
        holder.interval = self.bundle_interval
        return holder

    async def __aenter__(self) -> DevStack:
        self._plugins = Plugins.load()  # once for the bundle checks and the worker
        # An invalid bundle stops everything before any server starts.
        await asyncio.to_thread(BundleHolder.load, self.policy, registry=self._plugins.guardrails)
        await asyncio.to_thread(self.server.start)
        try:
            await asyncio.to_thread(self.fleet.start)
            self.bundle = await asyncio.to_thread(self._load_bundle)  # the fleet's port is known
            self.client = await connect(self.settings)
            self._worker = build_worker(
                self.client, self.settings, bundle=self.bundle, plugins=self._plugins
            )
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
            f"  Policy        {self.bundle.path if self.bundle else self.policy} "
            f"(bundle {self.bundle.current_hash() if self.bundle else '?'}; edits apply live)\n"
            "Press Ctrl-C to stop."
        )

    async def wait_for_interrupt(self) -> None:
        """Block until SIGINT or SIGTERM."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


class StandIns:
    """Two small services the demo's story needs besides the fleet, on one loopback port.

    ``GET /healthz`` is the session store's health endpoint, which the demo's freeze policy checks
    with ``http-health``: 200 while :attr:`healthy`, else 503 saying why. ``POST /pages`` is the
    on-call pager's inbox, where the ``webhook`` pager delivers: each page is kept in
    :attr:`pages`, once per ``dedup_key`` (a retried delivery is the same page).
    """

    def __init__(self) -> None:
        self.healthy = True
        self.unhealthy_because = "failing over to the replica"
        self.pages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_ins = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/healthz":
                    self._send(404, {"error": f"no such path {self.path}"})
                elif stand_ins.healthy:
                    self._send(200, {"ok": True})
                else:
                    self._send(503, {"ok": False, "why": stand_ins.unhealthy_because})

            def do_POST(self) -> None:
                if self.path != "/pages":
                    self._send(404, {"error": f"no such path {self.path}"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    page = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(400, {"error": "a page is a JSON object"})
                    return
                with stand_ins._lock:
                    if all(p.get("dedup_key") != page.get("dedup_key") for p in stand_ins.pages):
                        stand_ins.pages.append(page)
                self._send(202, {"received": True})

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the demo narrates what matters."""

        return Handler

    def __enter__(self) -> StandIns:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="stand-ins", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
