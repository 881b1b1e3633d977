"""The demo target world: a small HTTP fleet of hosts with its own SQLite store.

The ``http-deploy`` change kind and the ``http-health`` guardrail talk to any API of this shape;
this module is a real one to run them against, in tests and under ``changeguard dev``.

API (JSON unless stated; errors are ``{"error": message, "code": slug}``)::

    GET  /healthz               {"ok": true}
    GET  /hosts                 [{id, environment, labels, version, healthy, error_rate}]
    GET  /hosts/{id}            one host, or 404
    POST /hosts/{id}/deploy     {"version"} with an Idempotency-Key header (required, else 400)
                                -> {host, from_version, to_version, idempotency_key, seq, applied}
                                A replayed key returns the first result unchanged, applies nothing
                                and sets "Idempotent-Replayed: true"; the same key with another
                                host or version -> 409 (code "idempotency_key_reused").
    GET  /deploys[?host=&key=]  the ledger of applied effects, ordered by seq
    GET  /metrics               Prometheus text: fleet_requests_total, fleet_errors_total,
                                fleet_host_version, fleet_error_ratio (all labelled by host)
    POST /versions/{version}    {"bad": bool}; hosts running a bad version fail 20% of requests
    GET  /versions              the marked versions
    POST /hosts/{id}/drain      {"duration_ms", "progress_every_ms", "callback_url"} with an
                                Idempotency-Key header: starts an asynchronous drain job that
                                posts {"event": "progress", "details": {"percent"}} to the
                                callback URL every progress_every_ms and {"event": "done", ...}
                                at the end (retried until the URL answers; 410 stops it). A
                                replayed key runs nothing: the job's state is returned with
                                "Idempotent-Replayed: true", and a running job reports to the
                                new callback_url from then on (a retried activity attempt).
    POST /hosts/{id}/undrain    with an Idempotency-Key header: ends the drain (synchronous)
    GET  /drains[?key=]         drain jobs: {key, host, state, percent, runs, callbacks, ...}
    POST /admin/faults          {"fail_next": n, "deploy_delay_ms": ms, "silent_drains": n}
                                replaces the faults (omitted = 0): the next n deploys answer 503
                                before touching anything; each deploy waits ms (without
                                blocking) first; the next n drain jobs never call back
    GET  /admin/faults          the current faults

Traffic is simulated lazily: each host serves ``request_rate`` requests a second, and the counters
advance by elapsed monotonic time whenever they are read or a host's error ratio is about to change.
Run it with ``python -m demo.fleet --port 8800 --db .changeguard/fleet.db``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

REQUEST_RATE = 50.0
"""Simulated requests per second served by each host."""
GOOD_ERROR_RATIO = 0.001
BAD_ERROR_RATIO = 0.2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    id TEXT PRIMARY KEY, environment TEXT NOT NULL, labels TEXT NOT NULL, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deploys (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, idempotency_key TEXT NOT NULL UNIQUE,
    host TEXT NOT NULL, from_version TEXT NOT NULL, to_version TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions (version TEXT PRIMARY KEY, bad INTEGER NOT NULL);
"""


class _DeployBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=64)


class _VersionMark(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bad: bool


class _Faults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_next: int = Field(default=0, ge=0)
    deploy_delay_ms: int = Field(default=0, ge=0, le=600_000)
    silent_drains: int = Field(default=0, ge=0)


class _DrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    duration_ms: int = Field(default=2000, ge=0, le=3_600_000)
    progress_every_ms: int = Field(default=500, ge=10, le=600_000)
    callback_url: str | None = Field(default=None, max_length=8192)


CALLBACK_DEADLINE = 120.0
"""Seconds a drain job keeps retrying a callback its URL does not take (a worker restarting)."""


class _Drain(BaseModel):
    key: str
    host: str
    state: str = "running"  # running | done
    percent: int = 0
    runs: int = 1
    callbacks: int = 0
    silent: bool = False
    callback_url: str | None = None
    duration_ms: int = 0
    progress_every_ms: int = 500


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "code": code}, status_code=status)


def _invalid(e: ValidationError, expected: str) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(map(str, x['loc'])) or 'body'}: {x['msg']}" for x in e.errors()
    )
    return _error(422, "invalid_body", f"body must be {expected} ({problems})")


def _family(
    name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]
) -> str:
    """One metric family in Prometheus text exposition format."""
    out = [f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"]
    for labels, value in samples:
        pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        out.append(f"{name}{{{pairs}}} {value}\n")
    return "".join(out)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Fleet:
    """The fleet's state: one SQLite connection used under a lock, plus in-memory traffic."""

    def __init__(self, db_path: Path, *, hosts: int, environment: str, request_rate: float) -> None:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so that they also hold
        # against another process sharing the file; the timeout bounds waiting for its lock.
        self.conn = sqlite3.connect(
            db_path, timeout=5, isolation_level=None, check_same_thread=False
        )
        self.conn.row_factory = sqlite3.Row
        self.lock = threading.Lock()
        self.faults = _Faults()
        self.rate = request_rate
        self.traffic: dict[str, list[float]] = {}  # host -> [requests, errors]
        self.drains: dict[str, _Drain] = {}  # idempotency key -> job (in memory)
        self.drained: dict[str, str] = {}  # host -> the key of the drain in effect
        self.undrains: dict[str, str] = {}  # undrain key -> host
        self._jobs: set[asyncio.Task[None]] = set()
        self.last = time.monotonic()  # when the fleet started serving
        self.charged: dict[str, float] = {}  # host -> when its traffic was last charged
        with self.lock:
            self.conn.executescript(_SCHEMA)
            with self._tx():
                if self.conn.execute("SELECT COUNT(*) FROM hosts").fetchone()[0] == 0:
                    for i in range(1, hosts + 1):
                        labels = {"role": "web", "zone": "ab"[(i - 1) % 2]}
                        self.conn.execute(
                            "INSERT INTO hosts VALUES (?, ?, ?, ?)",
                            (f"web-{i:02d}", environment, json.dumps(labels), "1.0.0"),
                        )

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _bad(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT version FROM versions WHERE bad = 1")}

    def _hosts(self, host_id: str | None = None) -> list[dict[str, Any]]:
        """Hosts as the API shows them; call with the lock held."""
        bad = self._bad()
        sql, args = "SELECT * FROM hosts ORDER BY id", []
        if host_id is not None:
            sql, args = "SELECT * FROM hosts WHERE id = ?", [host_id]
        return [
            {
                "id": r["id"],
                "environment": r["environment"],
                "labels": json.loads(r["labels"]),
                "version": r["version"],
                "healthy": r["version"] not in bad,
                "error_rate": BAD_ERROR_RATIO if r["version"] in bad else GOOD_ERROR_RATIO,
            }
            for r in self.conn.execute(sql, args)
        ]

    def _charge(self, host_id: str, error_rate: float, now: float) -> None:
        """Charge one host the traffic it served since it was last charged, at ``error_rate``."""
        served = (now - self.charged.get(host_id, self.last)) * self.rate
        self.charged[host_id] = now
        counters = self.traffic.setdefault(host_id, [0.0, 0.0])
        counters[0] += served
        counters[1] += served * error_rate

    def _advance(self) -> list[dict[str, Any]]:
        """Charge every host the traffic since it was last charged at its current error ratio.

        A host's ratio changes only when it is deployed (which charges that host alone) or a
        version is marked (which charges all): charging every host on every deploy cost a scan
        of the whole fleet per deploy, quadratic in a rollout (bench/README.md).
        """
        now = time.monotonic()
        hosts = self._hosts()
        for h in hosts:
            self._charge(h["id"], h["error_rate"], now)
        return hosts

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def list_hosts(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse(self._hosts())

    async def get_host(self, request: Request) -> Response:
        host_id = request.path_params["host_id"]
        with self.lock:
            found = self._hosts(host_id)
        if not found:
            return _error(404, "unknown_host", f"unknown host {host_id!r}")
        return JSONResponse(found[0])

    async def deploy(self, request: Request) -> Response:
        host_id = request.path_params["host_id"]
        with self.lock:
            injected = self.faults.fail_next > 0
            if injected:
                self.faults.fail_next -= 1
            delay = self.faults.deploy_delay_ms
        if injected:
            return _error(503, "fault_injected", "injected fault: the fleet is unavailable")
        key = request.headers.get("idempotency-key", "").strip()
        if not key:
            return _error(
                400,
                "idempotency_key_missing",
                "the Idempotency-Key header is required: a retried deploy with the same key "
                "returns the first result instead of deploying twice",
            )
        try:
            body = _DeployBody.model_validate_json(await request.body())
        except ValidationError as e:
            return _invalid(e, '{"version": "..."}')
        if delay:
            await asyncio.sleep(delay / 1000)
        with self.lock:
            return self._apply(host_id, key, body.version)

    def _apply(self, host_id: str, key: str, version: str) -> Response:
        with self._tx():
            row = self.conn.execute(
                "SELECT * FROM deploys WHERE idempotency_key = ?", (key,)
            ).fetchone()
            if row is not None:
                if (row["host"], row["to_version"]) != (host_id, version):
                    return _error(
                        409,
                        "idempotency_key_reused",
                        f"Idempotency-Key {key!r} was already used to deploy {row['to_version']} "
                        f"to {row['host']}; a new request needs a new key",
                    )
                return JSONResponse(_result(row), headers={"Idempotent-Replayed": "true"})
            host = self.conn.execute(
                "SELECT version FROM hosts WHERE id = ?", (host_id,)
            ).fetchone()
            if host is None:
                return _error(404, "unknown_host", f"unknown host {host_id!r}")
            bad = host["version"] in self._bad()
            self._charge(host_id, BAD_ERROR_RATIO if bad else GOOD_ERROR_RATIO, time.monotonic())
            self.conn.execute("UPDATE hosts SET version = ? WHERE id = ?", (version, host_id))
            at = datetime.now(UTC).isoformat()
            cur = self.conn.execute(
                "INSERT INTO deploys (idempotency_key, host, from_version, to_version, at) "
                "VALUES (?, ?, ?, ?, ?) RETURNING *",
                (key, host_id, host["version"], version, at),
            )
            return JSONResponse(_result(cur.fetchone()))

    async def drain(self, request: Request) -> Response:
        host_id = request.path_params["host_id"]
        key = request.headers.get("idempotency-key", "").strip()
        if not key:
            return _error(400, "idempotency_key_missing", "the Idempotency-Key header is required")
        try:
            body = _DrainBody.model_validate_json(await request.body() or b"{}")
        except ValidationError as e:
            return _error(422, "invalid_body", f"body must be a drain request: {e.errors()[:3]}")
        with self.lock:
            if not self._hosts(host_id):
                return _error(404, "unknown_host", f"unknown host {host_id!r}")
            job = self.drains.get(key)
            if job is not None:
                if job.host != host_id:
                    return _error(
                        409, "idempotency_key_reused", f"{key!r} already drains {job.host}"
                    )
                if body.callback_url and job.state == "running":
                    job.callback_url = body.callback_url  # a retried attempt listens now
                return JSONResponse(job.model_dump(), headers={"Idempotent-Replayed": "true"})
            silent = self.faults.silent_drains > 0
            if silent:
                self.faults.silent_drains -= 1
            job = self.drains[key] = _Drain(
                key=key,
                host=host_id,
                silent=silent,
                callback_url=body.callback_url,
                duration_ms=body.duration_ms,
                progress_every_ms=body.progress_every_ms,
            )
        task = asyncio.create_task(self._run_drain(job))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)
        return JSONResponse(job.model_dump(), status_code=202)

    async def _run_drain(self, job: _Drain) -> None:
        """Drain for ``duration_ms``, reporting progress, then report the end (retried)."""
        started = time.monotonic()
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            while True:
                elapsed = (time.monotonic() - started) * 1000
                if elapsed >= job.duration_ms:
                    break
                await asyncio.sleep(min(job.progress_every_ms, job.duration_ms - elapsed) / 1000)
                job.percent = min(
                    100, int((time.monotonic() - started) * 100_000 / max(job.duration_ms, 1))
                )
                await self._report(
                    client,
                    job,
                    {"event": "progress", "details": {"percent": job.percent}},
                    retry=False,
                )
            with self.lock:
                job.state, job.percent = "done", 100
                self.drained[job.host] = job.key
            done = {
                "event": "done",
                "details": {
                    "applied": True,
                    "detail": f"drained {job.host} in {job.duration_ms} ms ({job.key})",
                    "before": {"drained": False},
                    "after": {"drained": True},
                },
            }
            await self._report(client, job, done, retry=True)

    async def _report(
        self, client: httpx.AsyncClient, job: _Drain, body: dict[str, Any], *, retry: bool
    ) -> None:
        deadline = time.monotonic() + CALLBACK_DEADLINE
        while not job.silent and job.callback_url:
            try:
                response = await client.post(job.callback_url, json=body)
                if response.status_code < 500:
                    job.callbacks += 1
                    return  # taken, or refused for good (403/410/422)
            except httpx.HTTPError:
                pass
            if not retry or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.2)

    async def undrain(self, request: Request) -> Response:
        host_id = request.path_params["host_id"]
        key = request.headers.get("idempotency-key", "").strip()
        if not key:
            return _error(400, "idempotency_key_missing", "the Idempotency-Key header is required")
        with self.lock:
            if key in self.undrains:
                return JSONResponse(
                    {"host": host_id, "undrained": True}, headers={"Idempotent-Replayed": "true"}
                )
            self.undrains[key] = host_id
            was = self.drained.pop(host_id, None)
        return JSONResponse({"host": host_id, "undrained": was is not None})

    async def list_drains(self, request: Request) -> Response:
        key = request.query_params.get("key")
        with self.lock:
            jobs = [j.model_dump() for k, j in self.drains.items() if key is None or k == key]
        return JSONResponse(jobs)

    async def deploys(self, request: Request) -> Response:
        where, args = [], []
        for column, param in (("host", "host"), ("idempotency_key", "key")):
            if param in request.query_params:
                where.append(f"{column} = ?")
                args.append(request.query_params[param])
        sql = "SELECT seq, idempotency_key, host, from_version, to_version, at FROM deploys"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq"
        with self.lock:
            return JSONResponse([dict(r) for r in self.conn.execute(sql, args)])

    async def metrics(self, request: Request) -> Response:
        with self.lock:
            hosts = self._advance()
            counters = {h["id"]: list(self.traffic[h["id"]]) for h in hosts}
        text = "".join(
            [
                _family(
                    "fleet_requests_total",
                    "counter",
                    "Requests served.",
                    [({"host": h["id"]}, int(counters[h["id"]][0])) for h in hosts],
                ),
                _family(
                    "fleet_errors_total",
                    "counter",
                    "Requests that failed.",
                    [({"host": h["id"]}, int(counters[h["id"]][1])) for h in hosts],
                ),
                _family(
                    "fleet_host_version",
                    "gauge",
                    "The version a host runs (always 1).",
                    [({"host": h["id"], "version": h["version"]}, 1) for h in hosts],
                ),
                _family(
                    "fleet_error_ratio",
                    "gauge",
                    "Share of a host's requests failing now.",
                    [({"host": h["id"]}, h["error_rate"]) for h in hosts],
                ),
            ]
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def mark_version(self, request: Request) -> Response:
        version = request.path_params["version"]
        try:
            body = _VersionMark.model_validate_json(await request.body())
        except ValidationError as e:
            return _invalid(e, '{"bad": true|false}')
        with self.lock, self._tx():
            self._advance()  # the old ratio applies to the traffic served until now
            self.conn.execute("INSERT OR REPLACE INTO versions VALUES (?, ?)", (version, body.bad))
        return JSONResponse({"version": version, "bad": body.bad})

    async def versions(self, request: Request) -> Response:
        with self.lock:
            rows = self.conn.execute("SELECT version, bad FROM versions ORDER BY version")
            return JSONResponse([{"version": r[0], "bad": bool(r[1])} for r in rows])

    async def set_faults(self, request: Request) -> Response:
        try:
            body = _Faults.model_validate_json(await request.body())
        except ValidationError as e:
            return _invalid(e, '{"fail_next": n, "deploy_delay_ms": ms, "silent_drains": n}')
        with self.lock:
            self.faults = body
        return JSONResponse(body.model_dump())

    async def get_faults(self, request: Request) -> Response:
        with self.lock:
            return JSONResponse(self.faults.model_dump())


def _result(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "host": row["host"],
        "from_version": row["from_version"],
        "to_version": row["to_version"],
        "idempotency_key": row["idempotency_key"],
        "seq": row["seq"],
        "applied": True,
    }


def create_app(
    db_path: Path,
    *,
    hosts: int = 6,
    environment: str = "prod",
    request_rate: float = REQUEST_RATE,
) -> Starlette:
    """Build the fleet app over its SQLite file; hosts are seeded only when the file has none.

    Args:
        db_path: the SQLite file (created with its parent directory if missing).
        hosts: how many hosts to seed (``web-01``, ``web-02``, ...).
        environment: the environment of the seeded hosts.
        request_rate: simulated requests per second per host.

    """
    if hosts < 1:
        raise ValueError("a fleet needs at least one host")
    fleet = _Fleet(db_path, hosts=hosts, environment=environment, request_rate=request_rate)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        with fleet.lock:
            fleet.conn.close()

    routes = [
        Route("/healthz", fleet.healthz),
        Route("/hosts", fleet.list_hosts),
        Route("/hosts/{host_id}", fleet.get_host),
        Route("/hosts/{host_id}/deploy", fleet.deploy, methods=["POST"]),
        Route("/hosts/{host_id}/drain", fleet.drain, methods=["POST"]),
        Route("/hosts/{host_id}/undrain", fleet.undrain, methods=["POST"]),
        Route("/drains", fleet.list_drains),
        Route("/deploys", fleet.deploys),
        Route("/metrics", fleet.metrics),
        Route("/versions", fleet.versions),
        Route("/versions/{version}", fleet.mark_version, methods=["POST"]),
        Route("/admin/faults", fleet.get_faults, methods=["GET"]),
        Route("/admin/faults", fleet.set_faults, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


class FleetServer:
    """Runs the fleet in-process with uvicorn on a background thread, bound to 127.0.0.1.

    Args:
        db_path: the SQLite file.
        port: the port to listen on; 0 picks a free one.
        hosts: how many hosts to seed on first start.
        start_timeout: seconds :meth:`start` waits for ``/healthz`` to answer.

    """

    def __init__(
        self, db_path: Path, *, port: int = 0, hosts: int = 6, start_timeout: float = 10.0
    ) -> None:
        self.db_path = db_path
        self.port = port
        self.hosts = hosts
        self.start_timeout = start_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:8800`` (the real port once started)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FleetServer:
        """Start serving and wait until ``/healthz`` answers.

        Raises:
            RuntimeError: the port cannot be bound or the server did not come up in time.

        """
        # IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on sockets that say they are TCP.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.port))
        except OSError as e:
            sock.close()
            raise RuntimeError(f"fleet cannot listen on 127.0.0.1:{self.port}: {e}") from e
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.db_path, hosts=self.hosts),
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fleet", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        with httpx.Client(trust_env=False, timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self._thread.is_alive():
                    raise RuntimeError(f"fleet server at {self.url} exited during start-up")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return self
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(
            f"fleet server at {self.url} did not answer within {self.start_timeout}s"
        )

    def stop(self) -> None:
        """Stop serving and wait for the server thread to finish."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FleetServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the fleet in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m demo.fleet", description="Run the demo fleet service."
    )
    parser.add_argument("--port", type=int, default=8800, help="port on 127.0.0.1 (default 8800)")
    parser.add_argument(
        "--db", type=Path, default=Path(".changeguard/fleet.db"), help="SQLite file"
    )
    parser.add_argument("--hosts", type=int, default=6, help="hosts to seed on first start")
    args = parser.parse_args(argv)
    print(f"fleet: http://127.0.0.1:{args.port} (db {args.db}); Ctrl-C stops")
    uvicorn.run(create_app(args.db, hosts=args.hosts), host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
