"""Integration fixtures: a worker on the dev server, the CLI as a process (``fleet``: tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities
from tests import fakes
from worker.main import build_worker
from worker.settings import Settings


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Cli:
    """Runs ``changeguard`` as a separate process against the test's server and task queue."""

    address: str
    task_queue: str

    async def __call__(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        """Run ``changeguard *args``; ``env`` adds to (or, with "", blanks) the environment."""
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": self.address,
            "CHANGEGUARD_TASK_QUEUE": self.task_queue,
            "CHANGEGUARD_LOG_FORMAT": "json",
            "COLUMNS": "200",
            **(env or {}),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode is not None
        return CliResult(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def worker(dev_env: WorkflowEnvironment, task_queue: str) -> AsyncIterator[None]:
    """A real worker on the dev server that replays every task (``max_cached_workflows=0``)."""
    settings = Settings.from_env(task_queue=task_queue)  # audit into the session tmp store
    async with build_worker(dev_env.client, settings, max_cached_workflows=0):
        yield


@pytest.fixture
async def fake_worker(
    dev_env: WorkflowEnvironment, task_queue: str, audit: AuditActivities
) -> AsyncIterator[Client]:
    """A worker with the fake plug-ins of tests/fakes.py that replays every task; yields its client.

    The fakes are registered under the real names, so the workflow → activity → plug-in path is real.
    """
    async with build_worker(
        dev_env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=audit,
        max_cached_workflows=0,
    ):
        yield dev_env.client


@pytest.fixture
def cli(dev_env: WorkflowEnvironment, task_queue: str) -> Cli:
    return Cli(dev_env.client.service_client.config.target_host, task_queue)


def write_change(path: Path, fleet_url: str, change_id: str, **overrides: Any) -> Path:
    """A change file deploying 1.1.0 to four fleet hosts, with the fleet's health as its gate."""
    doc: dict[str, Any] = {
        "change_id": change_id,
        "kind": "http-deploy",
        "summary": "deploy 1.1.0",
        "requester": "alice",
        "team": "web",
        "environment": "prod",
        "targets": [{"id": f"web-0{i}"} for i in range(1, 5)],
        "params": {"base_url": fleet_url, "version": "1.1.0"},
        "rollout": {"waves": ["1", "50%", "100%"], "max_parallel": 2, "bake": "1s"},
        "policy": {
            "guardrails": [
                {
                    "use": "http-health",
                    "owner": "web-team",
                    "params": {"url": f"{fleet_url}/healthz"},
                },
                {
                    "use": "change-window",
                    "params": {"timezone": "UTC", "allow": ["Mon-Sun 00:00-24:00"]},
                },
            ]
        },
    }
    doc.update(overrides)
    path.write_text(yaml.safe_dump(doc))
    return path
