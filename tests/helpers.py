"""Helpers the suites share (phase polling, the suite's default policy bundle, the repository root)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from changeguard.client import while_not_ready
from worker.client import ensure_search_attributes
from worker.converter import data_converter
from worker.devserver import STARTUP_TIMEOUT, dynamic_config_flags, temporal_binary
from workflows import search_attributes as sa
from workflows.models import ChangeStatus, Phase

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The repository's root (tests find the code, docs and infra/ from it, wherever they sit)."""

OPEN_BUNDLE: dict[str, Any] = {"unmatched": "allow"}
"""The suite's default platform bundle: no rules, and ``unmatched: allow`` said explicitly, so a
test's change is judged by the rules its request adds (tests of the platform's authority bring
their own bundle)."""


async def start_time_skipping() -> WorkflowEnvironment:
    """A time-skipping test server of its own (the session's, or a test's that must not share)."""
    environment = await WorkflowEnvironment.start_time_skipping(
        data_converter=data_converter,
        test_server_existing_path=temporal_binary("temporal-test-server"),
        test_server_startup_timeout=STARTUP_TIMEOUT,
    )
    await ensure_search_attributes(environment.client, "default", check=False)
    return environment


async def start_dev_server(*extra_args: str, ui_port: int | None = None) -> WorkflowEnvironment:
    """A dev server of its own, started as ``changeguard dev`` starts one.

    In memory, changeguard's search attributes registered, the dynamic config of
    ``worker.devserver.DEV_DYNAMIC_CONFIG`` (versioning, eager dispatch) and then ``extra_args``;
    the Web UI only on ``ui_port``.
    """
    return await WorkflowEnvironment.start_local(
        dev_server_startup_timeout=STARTUP_TIMEOUT,
        data_converter=data_converter,
        dev_server_existing_path=temporal_binary("temporal"),
        search_attributes=list(sa.ALL),
        dev_server_log_level="error",
        dev_server_extra_args=[*dynamic_config_flags(), *extra_args],
        ui=ui_port is not None,
        ui_port=ui_port,
    )


async def until_status(
    handle: WorkflowHandle[Any, Any], ready: Callable[[ChangeStatus], bool], *, within: float = 20
) -> ChangeStatus:
    """Poll the ``status`` query until ``ready``; fail with the last phase and message.

    The server's "Workflow Task in failed state" refusal (:func:`changeguard.client.not_ready`) is
    waited out as any client of ours does, within the same deadline.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while True:
        left = max(end - loop.time(), 0.0)
        status: ChangeStatus = await while_not_ready(
            lambda: handle.query("status", result_type=ChangeStatus), wait=left
        )
        if ready(status):
            return status
        if loop.time() > end:
            raise AssertionError(
                f"{handle.id}: condition not met within {within:g}s; "
                f"last {status.phase.value}: {status.message}"
            )
        await asyncio.sleep(0.05)


async def until_phase(
    handle: WorkflowHandle[Any, Any], *phases: Phase, within: float = 20
) -> ChangeStatus:
    """Poll the ``status`` query until the change is in one of ``phases``."""
    return await until_status(handle, lambda s: s.phase in phases, within=within)
