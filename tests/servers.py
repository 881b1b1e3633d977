"""Real Prometheus, Alertmanager and PostgreSQL binaries on loopback ports, for tests.

Each server runs the binary Debian installs (``infra/install-test-deps.sh``) in a directory of its
own, on a free 127.0.0.1 port, and is ready when its ``/-/ready`` answers 200 (PostgreSQL: when it
accepts a connection). Starting waits a bounded time and fails with the tail of the server's log;
stopping sends SIGTERM (PostgreSQL: SIGINT), then SIGKILL. All are context managers::

    with PrometheusServer(tmp, ["127.0.0.1:8800"]) as prom:
        prom.wait_for_series('fleet_error_ratio{host="web-01"}')

Prometheus answers ``/-/ready`` within a fraction of a second, but its first scrape comes about
five seconds later: the discovery manager hands targets to the scraper at most every 5 s (fixed in
2.42), so start one Prometheus per module, not per test.

Missing binaries are an error, never a skip: the suite is only green when it really ran.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx
import psycopg
from psycopg import sql

LOG_TAIL_LINES = 30
"""How many lines of a server's log an error quotes."""

T = TypeVar("T")


class ServerError(RuntimeError):
    """A test server did not start, or did not reach the expected state in time."""


def find_binary(*names: str) -> str:
    """The first of ``names`` found on PATH.

    Raises:
        ServerError: none is installed; the message says how to install them.

    """
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise ServerError(
        f"none of {', '.join(names)} is on PATH; run infra/install-test-deps.sh as root "
        "(it installs Debian's prometheus and prometheus-alertmanager packages)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def poll(probe: Callable[[], T | None], *, timeout: float, interval: float = 0.1, what: str) -> T:
    """Call ``probe`` until it returns something other than None.

    Raises:
        ServerError: ``timeout`` seconds passed; the message says what was awaited.

    """
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise ServerError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class _BinaryServer:
    """A server binary on a free loopback port; subclasses say how to configure and run it."""

    binary_names: tuple[str, ...] = ()
    label = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, tmp_dir: Path, *, start_timeout: float = 30.0) -> None:
        self.dir = Path(tmp_dir)
        self.start_timeout = start_timeout
        self.port = 0
        self.log_path = self.dir / f"{self.label}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    def _args(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write configuration files into ``self.dir``."""

    def _find_binary(self) -> str:
        return find_binary(*self.binary_names)

    def _popen_options(self) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` keyword arguments (e.g. the user to run as)."""
        return {}

    def _cleanup(self) -> None:
        """Remove what :meth:`_prepare` made outside ``self.dir``; called by :meth:`stop`."""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def start(self) -> Self:
        """Start the binary and wait until ``/-/ready`` answers 200.

        A port taken between choosing and binding it is retried with another port.

        Raises:
            ServerError: the binary is missing, exited, or was not ready in time; with the log tail.

        """
        binary = self._find_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        for _attempt in range(3):
            self.port = free_port()
            with self.log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    self._args(binary),
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    **self._popen_options(),
                )
            try:
                poll(self._ready, timeout=self.start_timeout, what=f"{self.label} to be ready")
                return self
            except ServerError as exc:
                exited = self._proc.poll() is not None
                self._terminate()
                if exited and "address already in use" in self.log_tail().lower():
                    continue
                self._cleanup()
                raise ServerError(
                    f"{self.label} ({' '.join(self._args(binary))}) "
                    f"{'exited' if exited else 'was not ready'}: {exc}\n"
                    f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
                ) from None
        self._cleanup()
        raise ServerError(f"{self.label} found no free port in 3 attempts:\n{self.log_tail()}")

    def _ready(self) -> bool | None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise ServerError(f"the process exited with status {self._proc.returncode}")
        try:
            ok = httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return None
        return True if ok else None

    def stop(self) -> None:
        """Stop the server (``stop_signal``, then SIGKILL after 10 s); safe to call twice."""
        self._terminate()
        self._cleanup()

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PrometheusServer(_BinaryServer):
    """Prometheus scraping ``scrape_targets`` (``host:port``, job ``fleet``) every ``scrape_interval``.

    Args:
        tmp_dir: where the configuration, the TSDB and the log go.
        scrape_targets: ``host:port`` of each endpoint serving ``/metrics``.
        scrape_interval: a Prometheus duration; the scrape timeout is the same.
        start_timeout: seconds :meth:`start` waits for readiness.

    """

    binary_names = ("prometheus",)
    label = "prometheus"

    def __init__(
        self,
        tmp_dir: Path,
        scrape_targets: list[str],
        *,
        scrape_interval: str = "1s",
        start_timeout: float = 30.0,
    ) -> None:
        super().__init__(tmp_dir, start_timeout=start_timeout)
        self.scrape_targets = list(scrape_targets)
        self.scrape_interval = scrape_interval
        self.config_path = self.dir / "prometheus.yml"

    def _prepare(self) -> None:
        targets = ", ".join(f'"{t}"' for t in self.scrape_targets)
        self.config_path.write_text(
            "global:\n"
            f"  scrape_interval: {self.scrape_interval}\n"
            f"  scrape_timeout: {self.scrape_interval}\n"
            f"  evaluation_interval: {self.scrape_interval}\n"
            "scrape_configs:\n"
            "  - job_name: fleet\n"
            "    static_configs:\n"
            f"      - targets: [{targets}]\n"
        )

    def _args(self, binary: str) -> list[str]:
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
        ]

    def query(self, promql: str) -> dict[str, Any]:
        """The ``data`` of an instant query.

        Raises:
            ServerError: Prometheus answered an error.

        """
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        if body.get("status") != "success":
            raise ServerError(f"query {promql!r} failed: {body}")
        data: dict[str, Any] = body["data"]
        return data

    def wait_for_series(self, promql: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll until ``promql`` returns a non-empty vector; returns its samples.

        Raises:
            ServerError: still empty after ``timeout`` seconds; with the scrape targets' health.

        """

        def probe() -> list[dict[str, Any]] | None:
            data = self.query(promql)
            found: list[dict[str, Any]] = data["result"]
            return found if data["resultType"] == "vector" and found else None

        try:
            return poll(probe, timeout=timeout, interval=0.2, what=f"series of {promql!r}")
        except ServerError as exc:
            targets = httpx.get(f"{self.url}/api/v1/targets", timeout=5).json()
            health = [
                (t.get("scrapeUrl"), t.get("health"), t.get("lastError"))
                for t in targets.get("data", {}).get("activeTargets", [])
            ]
            raise ServerError(f"{exc}; scrape targets: {health}") from None


class AlertmanagerServer(_BinaryServer):
    """Alertmanager with a single null receiver and clustering disabled.

    Args:
        tmp_dir: where the configuration, the state and the log go.
        start_timeout: seconds :meth:`start` waits for readiness.

    """

    binary_names = ("alertmanager", "prometheus-alertmanager")
    label = "alertmanager"

    def __init__(self, tmp_dir: Path, *, start_timeout: float = 30.0) -> None:
        super().__init__(tmp_dir, start_timeout=start_timeout)
        self.config_path = self.dir / "alertmanager.yml"

    def _prepare(self) -> None:
        self.config_path.write_text("route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n")

    def _args(self, binary: str) -> list[str]:
        return [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
        ]

    def post_alert(
        self,
        labels: dict[str, str],
        annotations: dict[str, str] | None = None,
        minutes: int = 10,
        *,
        starts_at: datetime | None = None,
    ) -> None:
        """Fire an alert that started at ``starts_at`` (a minute ago) and lasts ``minutes`` more.

        Raises:
            httpx.HTTPStatusError: Alertmanager refused it.

        """
        now = datetime.now(UTC)
        alert = {
            "labels": labels,
            "annotations": annotations or {},
            "startsAt": (starts_at or now - timedelta(minutes=1)).isoformat(),
            "endsAt": (now + timedelta(minutes=minutes)).isoformat(),
            "generatorURL": "http://127.0.0.1/test",
        }
        httpx.post(f"{self.url}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()

    def silence(self, matchers: dict[str, str], minutes: int = 10) -> str:
        """Silence alerts whose labels equal ``matchers``; returns the silence id."""
        now = datetime.now(UTC)
        body = {
            "matchers": [
                {"name": k, "value": v, "isRegex": False, "isEqual": True}
                for k, v in matchers.items()
            ],
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=minutes)).isoformat(),
            "createdBy": "tests",
            "comment": "silenced by a test",
        }
        response = httpx.post(f"{self.url}/api/v2/silences", json=body, timeout=5)
        response.raise_for_status()
        silence_id: str = response.json()["silenceID"]
        return silence_id

    def alerts(self, filters: list[str] | None = None, **flags: bool) -> list[dict[str, Any]]:
        """The alerts ``GET /api/v2/alerts`` lists for matchers and flags (``silenced=False``)."""
        params: dict[str, str | list[str]] = {"filter": filters or []}
        params.update({k: str(v).lower() for k, v in flags.items()})
        response = httpx.get(f"{self.url}/api/v2/alerts", params=params, timeout=5)
        response.raise_for_status()
        found: list[dict[str, Any]] = response.json()
        return found

    def wait_for_alerts(
        self, n: int, filters: list[str] | None = None, timeout: float = 10.0, **flags: bool
    ) -> list[dict[str, Any]]:
        """Poll until at least ``n`` alerts match ``filters`` and ``flags``; returns them.

        Raises:
            ServerError: fewer after ``timeout`` seconds.

        """

        def probe() -> list[dict[str, Any]] | None:
            found = self.alerts(filters, **flags)
            return found if len(found) >= n else None

        return poll(probe, timeout=timeout, what=f"{n} alerts matching {filters or 'anything'}")


def postgres_bindir() -> Path:
    """The directory holding ``postgres`` and ``initdb``: on PATH, else Debian's newest.

    Raises:
        ServerError: no PostgreSQL server is installed; the message says how to install it.

    """
    on_path = shutil.which("postgres")
    candidates = [Path(on_path).parent] if on_path else []

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    raise ServerError(
        "no PostgreSQL server found (postgres and initdb on PATH or in /usr/lib/postgresql/*/bin); "
        "run infra/install-test-deps.sh as root (it installs Debian's postgresql package)"
    )


class PostgresServer(_BinaryServer):
    """A fresh PostgreSQL cluster (``initdb``) on a free loopback port: TCP only, trust auth.

    PostgreSQL refuses to run as root. Run as root (as CI is), the cluster lives in a directory of
    its own under the system temp dir, owned by the ``postgres`` system user that Debian's package
    creates, and both ``initdb`` and the server run as that user; the cluster is removed on stop.
    Otherwise it lives in ``tmp_dir/data`` and runs as the current user.

    Args:
        tmp_dir: where the log (and, when not root, the cluster) goes.
        start_timeout: seconds :meth:`start` waits for the server to accept connections.
        fsync: whether commits reach the disk (``bench/ledger.py``); off for tests.

    """

    label = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: SIGTERM would wait for every client to leave
    superuser = "postgres"

    def __init__(self, tmp_dir: Path, *, start_timeout: float = 30.0, fsync: bool = False) -> None:
        super().__init__(tmp_dir, start_timeout=start_timeout)
        self.fsync = fsync  # off for a throw-away test cluster; on to measure as in production
        self.data_dir = self.dir / "data"
        self._own_dir: Path | None = None
        self._run_as: pwd.struct_passwd | None = None

    @property
    def dsn(self) -> str:
        """The connection URL of the ``postgres`` database, as the superuser."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """The connection URL of ``database``, as the superuser."""
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its connection URL."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def dsn_as(self, role: str, database: str) -> str:
        """The connection URL of ``database`` as ``role`` (trust auth: no password)."""
        return f"postgresql://{role}@127.0.0.1:{self.port}/{database}"

    def ensure_role(self, name: str) -> str:
        """Create a login role unless it exists (roles are cluster-wide); returns its name."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            if found is None:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        return name

    def _find_binary(self) -> str:
        return str(postgres_bindir() / "postgres")

    def _popen_options(self) -> dict[str, Any]:
        if self._run_as is None:
            return {}
        return {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}

    def _prepare(self) -> None:
        if os.geteuid() == 0:
            try:
                self._run_as = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerError(
                    "running as root, PostgreSQL needs the 'postgres' system user; "
                    "run infra/install-test-deps.sh (Debian's postgresql package creates it)"
                ) from None
            self._own_dir = Path(tempfile.mkdtemp(prefix="changeguard-pg-"))
            os.chown(self._own_dir, self._run_as.pw_uid, self._run_as.pw_gid)
            self.data_dir = self._own_dir / "data"
        initdb = [
            str(postgres_bindir() / "initdb"),
            f"--pgdata={self.data_dir}",
            f"--username={self.superuser}",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        try:
            done = subprocess.run(
                initdb,
                cwd=self._own_dir or self.dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=120,
                check=False,
                **self._popen_options(),
            )
        except subprocess.TimeoutExpired as exc:
            self._cleanup()
            raise ServerError(f"initdb took longer than {exc.timeout:g}s") from None
        if done.returncode != 0:
            self._cleanup()
            output = (done.stdout + done.stderr).decode(errors="replace").splitlines()
            raise ServerError(
                f"{' '.join(initdb)} exited with status {done.returncode}:\n"
                + "\n".join(output[-LOG_TAIL_LINES:])
            )

    def _args(self, binary: str) -> list[str]:
        return [
            binary,
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",  # TCP on loopback only
            "-c",
            f"fsync={'on' if self.fsync else 'off'}",  # tests: speed over crash safety
            "-c",
            "max_connections=50",
        ]

    def _ready(self) -> bool | None:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise ServerError(f"the process exited with status {self._proc.returncode}")
        try:
            with psycopg.connect(self.dsn, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return None

    def _cleanup(self) -> None:
        own, self._own_dir = self._own_dir, None
        if own is not None:
            shutil.rmtree(own, ignore_errors=True)


class EventReceiver:
    """An HTTP server that records every JSON body POSTed to it and answers 202."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(202)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "success", "message": "Change event processed"}')

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2/change/enqueue"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EventReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
