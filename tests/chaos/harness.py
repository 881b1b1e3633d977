"""The chaos campaign's world: every moving part as something a fault can hit.

- the Temporal dev server: the ``infra/devserver`` image (FROM scratch, built here by its
  ``build.sh``) run through ``testcontainers`` with its SQLite file on a bind-mounted volume, so a
  crash is ``docker kill`` and a restart is ``docker start`` of the same container on the same
  file and the same host port; without a Docker engine, ``temporal server start-dev
  --db-filename`` as a process (SIGKILL, then the same command on the same file);
- the demo fleet in the ``infra/fleet`` image (FROM scratch around this machine's own Python,
  built by its ``build.sh``) through ``testcontainers``, its SQLite file on a volume: a crash is
  ``docker kill`` + ``docker start``, a partition ``docker pause`` + ``unpause``; without Docker
  (or with ``CHANGEGUARD_CHAOS_FLEET=process``) ``python -m demo.fleet`` as a process, SIGKILLed
  and restarted, partitioned by its proxy; ``/admin/faults`` for 5xx and slow answers either way;
- PostgreSQL (the audit store) in the ``infra/postgres`` image (FROM scratch around this
  machine's Debian install, built by its ``build.sh``) through ``testcontainers``, its cluster on
  a volume: a crash is ``docker kill`` (no checkpoint: crash recovery at ``docker start``), a
  partition ``docker pause``; without Docker (or with ``CHANGEGUARD_CHAOS_POSTGRES=process``)
  a process on a fixed port and data directory, crashed by SIGQUIT, partitioned by its proxy;
- a :class:`TcpProxy` in front of the fleet (and of a PostgreSQL process): the workers reach it
  only through the proxy, and a partition stops it forwarding anything in either direction
  (connections stay open, bytes wait, new connections hang), as a lost link does until TCP gives
  up; a second one with a connect delay is the slow link of ``long`` changes;
- worker processes (``python -m cli.main worker``), SIGKILLed and respawned by a supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.servers import PostgresServer, ServerError, free_port, postgres_bindir
from worker.devserver import temporal_binary
from workflows import search_attributes as sa

ROOT = Path(__file__).resolve().parents[2]
DEVSERVER_TAG = "changeguard/devserver:chaos"
FLEET_TAG = "changeguard/fleet:chaos"
POSTGRES_TAG = "changeguard/postgres:chaos"
UID = 10001  # the dev-server image's user (infra/devserver)


def _wait(probe: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if probe():
                return
        time.sleep(0.2)
    raise ServerError(f"{what} did not happen within {within:g}s")


def freeze(container: Any, *, attempts: int = 10, pause: float = 0.5) -> None:
    """``docker pause``, retried while runc's freezer answers "unable to freeze".

    The cgroup freezer gives up when the container's processes do not settle in time (seen once
    in CI on the PostgreSQL container under load: ``OCI runtime pause failed: unable to freeze``);
    the same pause a moment later succeeds. Any other refusal, or the last one, is raised with
    the engine's explanation, so the campaign notes why the partition did not happen.
    """
    import docker.errors

    for attempt in range(1, attempts + 1):
        try:
            container.pause()
            return
        except docker.errors.APIError as exc:
            if attempt == attempts or "unable to freeze" not in str(exc.explanation or ""):
                raise ServerError(
                    f"docker pause of {container.short_id} refused after {attempt} attempt(s): "
                    f"{exc.explanation or exc}"
                ) from exc
            time.sleep(pause)


def _tcp_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ---------------------------------------------------------------------------------- TCP proxy


class TcpProxy:
    """A loopback TCP forwarder on its own thread and event loop, which can be partitioned.

    Args:
        upstream_port: where connections are forwarded (127.0.0.1).
        connect_delay: seconds each new connection waits before it is forwarded (a slow link).
    """

    def __init__(self, upstream_port: int, *, connect_delay: float = 0.0) -> None:
        self.upstream_port = upstream_port
        self.connect_delay = connect_delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._open = asyncio.Event()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._open.set()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.connect_delay:
                await asyncio.sleep(self.connect_delay)
            await self._open.wait()
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port
                )
            except OSError:
                return
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
            up_writer.close()
        finally:
            writer.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._open.wait()
                data = await src.read(65536)
                if not data:
                    break
                await self._open.wait()  # bytes read just before a partition wait for its end
                dst.write(data)
                await dst.drain()
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    @property
    def partitioned(self) -> bool:
        return not self._open.is_set()

    def partition(self) -> None:
        """Stop forwarding in both directions, for old and new connections alike."""
        self._loop.call_soon_threadsafe(self._open.clear)

    def heal(self) -> None:
        """Forward again: what waited is delivered."""
        self._loop.call_soon_threadsafe(self._open.set)

    def close(self) -> None:
        def stop() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(stop)
            self._thread.join(5)


# ------------------------------------------------------------------------------- fleet process


class FleetProcess:
    """The demo fleet as a process on a fixed port, over one SQLite file that survives kills."""

    def __init__(self, directory: Path, *, hosts: int) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.db = directory / "fleet.db"
        self.hosts = hosts
        self.port = free_port()
        self.log = directory / "fleet.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FleetProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "demo.fleet",
                    "--port",
                    str(self.port),
                    "--db",
                    str(self.db),
                    "--hosts",
                    str(self.hosts),
                ],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait(
            lambda: httpx.get(f"{self.url}/healthz", timeout=1, trust_env=False).status_code == 200,
            30,
            "the fleet answering",
        )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def faults(self, **faults: int) -> None:
        """Replace the fleet's injected faults (``fail_next``, ``deploy_delay_ms``)."""
        httpx.post(
            f"{self.url}/admin/faults", json=faults, timeout=5, trust_env=False
        ).raise_for_status()


class FleetContainer(FleetProcess):
    """The demo fleet in the ``infra/fleet`` image: crash = ``docker kill``, partition = pause.

    The SQLite file lives on a bind-mounted volume and the port is fixed, so ``docker start`` of
    the same container is a restart on the same ledger at the same address.
    """

    def __init__(self, directory: Path, *, hosts: int, image: str) -> None:
        super().__init__(directory, hosts=hosts)
        self.image = image
        self._container: Any = None

    def start(self) -> FleetContainer:
        if self._container is None:
            from testcontainers.core.container import DockerContainer

            data = self.dir / "data"
            data.mkdir(parents=True, exist_ok=True)
            os.chown(data, UID, UID)
            self.db = data / "fleet.db"
            self._container = (
                DockerContainer(self.image)
                .with_bind_ports(8800, self.port)
                .with_volume_mapping(str(data), "/data", "rw")
                .with_command(str(self.hosts))
                .with_kwargs(labels={"io.changeguard.test": "chaos"})
            )
            self._container.start()
        else:
            self._container.get_wrapped_container().start()
        _wait(
            lambda: httpx.get(f"{self.url}/healthz", timeout=1, trust_env=False).status_code == 200,
            30,
            "the fleet container answering",
        )
        return self

    def kill(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.get_wrapped_container().kill()

    def pause(self) -> None:
        """Freeze the fleet: connections are accepted by the engine's proxy, and hang."""
        freeze(self._container.get_wrapped_container())

    def unpause(self) -> None:
        self._container.get_wrapped_container().unpause()

    def remove(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()
            self._container = None


def build_image(folder: str, tag: str) -> str:
    """Run ``infra/<folder>/build.sh <tag>`` (images are built here from local files); the tag."""
    done = subprocess.run(
        ["bash", str(ROOT / "infra" / folder / "build.sh"), tag],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise ServerError(f"infra/{folder}/build.sh failed:\n{done.stdout}{done.stderr}")
    return tag


def build_fleet_image() -> str:
    """Build infra/fleet (FROM scratch around this machine's Python); the tag."""
    return build_image("fleet", FLEET_TAG)


# ------------------------------------------------------------------------- PostgreSQL process


class CrashablePostgres(PostgresServer):
    """A PostgreSQL cluster that can crash (SIGQUIT) and start again on its port and data."""

    def crash(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(
                signal.SIGQUIT
            )  # immediate shutdown: no checkpoint, recovery next start
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._proc = None

    def restart(self) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._args(str(postgres_bindir() / "postgres")),
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._popen_options(),
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(psycopg.OperationalError),
                psycopg.connect(self.dsn, connect_timeout=1),
            ):
                return
            if self._proc.poll() is not None and "already in use" not in self.log_tail(5):
                # A crashed postmaster's children may hold the port a moment: try again.
                time.sleep(0.5)
                return self.restart()
            time.sleep(0.2)
        raise ServerError(f"postgres did not come back:\n{self.log_tail()}")


class PostgresContainer:
    """The audit store in the ``infra/postgres`` image: crash = ``docker kill``, partition = pause.

    The cluster lives on a bind-mounted volume and the host port is fixed, so ``docker start`` of
    the same container is a crash recovery on the same data at the same address (the image runs
    ``initdb`` only on an empty volume). The DSN is the mapped port's: workers connect directly.
    """

    superuser = "postgres"

    def __init__(self, directory: Path, *, image: str) -> None:
        self.dir = directory
        self.image = image
        self.port = free_port()
        self._container: Any = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresContainer:
        from testcontainers.core.container import DockerContainer

        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        os.chown(data, UID, UID)
        self._container = (
            DockerContainer(self.image)
            .with_bind_ports(5432, self.port)
            .with_volume_mapping(str(data), "/data", "rw")
            .with_kwargs(labels={"io.changeguard.test": "chaos"})
        )
        self._container.start()
        self.wait_up()
        return self

    def wait_up(self, within: float = 60) -> None:
        def answers() -> bool:
            with psycopg.connect(self.dsn, connect_timeout=1):
                return True

        try:
            _wait(answers, within, f"PostgreSQL in its container on port {self.port}")
        except ServerError as exc:
            raise ServerError(f"{exc}:\n{self.log_tail()}") from None

    def log_tail(self, lines: int = 20) -> str:
        if self._container is None:
            return ""
        with contextlib.suppress(Exception):
            raw = self._container.get_wrapped_container().logs(tail=lines)
            return bytes(raw).decode(errors="replace")
        return ""

    def crash(self) -> None:
        """SIGKILL the postmaster (PID 1: every backend dies with it); no checkpoint."""
        with contextlib.suppress(Exception):
            self._container.get_wrapped_container().kill()

    def restart(self) -> None:
        """``docker start`` of the same container: crash recovery on the same volume and port."""
        self._container.get_wrapped_container().start()
        self.wait_up()

    def pause(self) -> None:
        """Freeze the server: connections stay open and new ones are accepted, and bytes wait."""
        freeze(self._container.get_wrapped_container())

    def unpause(self) -> None:
        self._container.get_wrapped_container().unpause()

    def stop(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()
            self._container = None


def build_postgres_image() -> str:
    """Build infra/postgres (FROM scratch around this machine's Debian PostgreSQL); the tag."""
    return build_image("postgres", POSTGRES_TAG)


# ------------------------------------------------------------------------------- dev server


class DevServer:
    """The Temporal dev server on a fixed loopback port, over a SQLite file that survives kills."""

    def __init__(self, directory: Path, *, container: bool) -> None:
        self.dir = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.mode = "container" if container else "process"
        self.log = directory / "devserver.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._container: Any = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DevServer:
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        if self.mode == "container":
            os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
            from testcontainers.core.container import DockerContainer

            os.chown(data, UID, UID)
            self._container = (
                DockerContainer(build_devserver_image())
                .with_bind_ports(7233, self.port)
                .with_volume_mapping(str(data), "/data", "rw")
                .with_kwargs(labels={"io.changeguard.test": "chaos"})
            )
            self._container.start()
        else:
            self._spawn()
        self.wait_up()
        return self

    def _spawn(self) -> None:
        flags = sa.cli_flags()
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [
                    temporal_binary("temporal"),
                    "server",
                    "start-dev",
                    "--headless",
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "error",
                    "--db-filename",
                    str(self.dir / "data" / "temporal.db"),
                    *flags,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_up(self, within: float = 90) -> None:
        _wait(lambda: _tcp_open(self.port), within, f"the dev server on {self.address}")

    def kill(self) -> None:
        """SIGKILL the server (the container's process, or the process)."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.get_wrapped_container().kill()
        elif self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(10)

    def restart(self) -> None:
        """Start again on the same SQLite file (the same container, volume and port)."""
        if self._container is not None:
            self._container.get_wrapped_container().start()
        else:
            self._spawn()
        self.wait_up()

    def stop(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.stop()
            self._container = None
        elif self._proc is not None:
            self.kill()


def docker_available() -> bool:
    """Whether a Docker engine answers, after ``infra/docker-engine.sh`` had its chance."""
    if os.environ.get("CHANGEGUARD_CHAOS_NO_DOCKER"):
        return False
    script = ROOT / "infra" / "docker-engine.sh"
    done = subprocess.run(["bash", str(script)], capture_output=True, timeout=300, check=False)
    return done.returncode == 0 and shutil.which("docker") is not None


def build_devserver_image() -> str:
    """Build infra/devserver (FROM scratch, from local files only); the tag."""
    return build_image("devserver", DEVSERVER_TAG)


# ------------------------------------------------------------------------------------ workers


class WorkerSlot:
    """One worker process slot: killed by faults, respawned by the supervisor when let up."""

    def __init__(self, name: str, env: dict[str, str], directory: Path) -> None:
        self.name = name
        self.env = env
        self.log = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.held_until = 0.0
        self.spawns = 0

    def spawn(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "worker"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.spawns += 1

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, hold: float = 0.0) -> None:
        """SIGKILL (no goodbye to the server); stay down for ``hold`` seconds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.held_until = time.monotonic() + hold

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ---\n" + "\n".join(text.splitlines()[-lines:])

    def crash_count(self) -> int:
        """Tracebacks in the log other than the SDK's warnings of a failed activity attempt.

        A retryable failure (the fleet answering 503, the audit store away) is logged by the SDK
        as "Completing activity as failed" with its traceback: expected under faults, not counted.
        What is counted is anything else with a traceback: a crash of the process, an error in
        the worker's own code.
        """
        if not self.log.exists():
            return 0
        count = 0
        with self.log.open(errors="replace") as lines:
            for line in lines:
                if "Traceback (most recent call last)" not in line:
                    continue
                if '"Completing activity as failed' in line and '"level": "warning"' in line:
                    continue
                count += 1
        return count


def worker_env(
    *, address: str, task_queue: str, audit_url: str, policy: Path, directory: Path
) -> dict[str, str]:
    """The environment of a campaign worker process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "CHANGEGUARD_"))}
    env.update(
        TEMPORAL_ADDRESS=address,
        TEMPORAL_NAMESPACE="default",
        CHANGEGUARD_TASK_QUEUE=task_queue,
        CHANGEGUARD_AUDIT_URL=audit_url,
        CHANGEGUARD_DIRECTORY=f"yaml:{directory}",
        CHANGEGUARD_POLICY=str(policy),
        CHANGEGUARD_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
    )
    return env
