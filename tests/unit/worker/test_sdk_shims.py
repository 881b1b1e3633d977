"""The SDK shim (worker/sdk_shims.py): the payload passes are skipped only when they change nothing."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import temporalio
import temporalio.bridge.worker as bridge_worker
from temporalio.api.common.v1 import Payload
from temporalio.bridge.proto.workflow_commands import ScheduleActivity, WorkflowCommand
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.testing import WorkflowEnvironment
from temporalio.worker.workflow_sandbox import _runner

from tests import builders, fakes
from worker import sdk_shims
from worker.main import build_worker
from workflows.models import Decision, GateInput, GuardrailReport

FIVE = ("fake-timing", "fake-lock", "fake-health", "fake-state", "fake-inflight")
"""The five fake guardrails of ``tests.fakes.guardrails``."""


class Reversing(PayloadCodec):
    """A codec that visibly changes every payload (reverses its bytes)."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [Payload(metadata=dict(p.metadata), data=p.data[::-1]) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return await self.encode(payloads)


@dataclasses.dataclass(frozen=True)
class Counting(DataConverter):
    """The plain converter (no codec, no storage), counting the codec passes the SDK makes."""

    calls: list[int] = dataclasses.field(default_factory=list)

    async def _encode_payload_sequence(self, payloads: Sequence[Payload]) -> list[Payload]:
        self.calls.append(len(payloads))
        return await super()._encode_payload_sequence(payloads)


def _completion() -> WorkflowActivationCompletion:
    completion = WorkflowActivationCompletion(run_id="run-1")
    command = WorkflowCommand(
        schedule_activity=ScheduleActivity(
            seq=1, activity_id="a", activity_type="run_check", arguments=[Payload(data=b"abc")]
        )
    )
    completion.successful.commands.append(command)
    return completion


async def _encode(converter: DataConverter) -> bytes:
    completion = _completion()
    await bridge_worker.encode_completion(
        completion, converter, encode_headers=True, storage_concurrency_limit=1
    )
    return completion.successful.commands[0].schedule_activity.arguments[0].data


@pytest.fixture
def shim() -> Iterator[None]:
    """The shim in place for the test; the process's own state afterwards."""
    was = sdk_shims.installed()
    assert sdk_shims.install()
    yield
    if not was:
        sdk_shims.uninstall()


def test_the_installed_sdk_is_one_the_shim_was_verified_against() -> None:
    """An SDK upgrade fails here until its payload passes are read again (see the module doc)."""
    assert temporalio.__version__ in sdk_shims.VERIFIED
    assert sdk_shims.install()
    assert sdk_shims.installed()


def test_an_unverified_sdk_version_changes_nothing() -> None:
    sdk_shims.uninstall()
    try:
        assert sdk_shims.install("9.9.9") is False
        assert not sdk_shims.installed()
        assert not hasattr(bridge_worker.encode_completion, "__changeguard_identity_skip__")
    finally:
        sdk_shims.install()


async def test_without_a_codec_the_passes_are_skipped_and_the_payload_is_the_same(
    shim: None,
) -> None:
    skipped = Counting()
    assert await _encode(skipped) == b"abc"
    assert skipped.calls == []  # the SDK's pass never ran
    sdk_shims.uninstall()
    try:
        sdk_pass = Counting()
        assert await _encode(sdk_pass) == b"abc"  # what the SDK's own pass gives: the same bytes
        assert sdk_pass.calls == [1]
    finally:
        sdk_shims.install()


async def test_with_a_codec_the_sdk_passes_run_as_shipped(shim: None) -> None:
    assert await _encode(DataConverter(payload_codec=Reversing())) == b"cba"
    sdk_shims.uninstall()
    try:
        assert await _encode(DataConverter(payload_codec=Reversing())) == b"cba"
    finally:
        sdk_shims.install()


async def _gate_counting_sandbox_calls(
    env: WorkflowEnvironment, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> int:
    calls: list[int] = []
    real = _runner._Instance.get_serialization_context

    def counting(self: Any, command_info: Any) -> Any:
        calls.append(1)
        return real(self, command_info)

    monkeypatch.setattr(_runner._Instance, "get_serialization_context", counting)
    change = builders.change_context()
    policy = {"guardrails": [{"use": n, "params": {"outcome": "pass"}} for n in FIVE]}
    async with build_worker(
        env.client, task_queue=task_queue, guardrails=fakes.guardrails(), kinds=fakes.kinds()
    ):
        report = await env.client.execute_workflow(
            "GuardrailGate",
            GateInput(change=change, policy=policy),
            id=f"gate-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            result_type=GuardrailReport,
        )
    assert report.decision is Decision.PROCEED
    assert len(report.checks) == len(FIVE)
    monkeypatch.undo()
    return len(calls)


async def test_a_gate_on_the_real_worker_no_longer_asks_the_sandbox_per_payload(
    env: WorkflowEnvironment, task_queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker build_worker makes installs the shim; without it, every payload asks the sandbox."""
    assert await _gate_counting_sandbox_calls(env, task_queue, monkeypatch) == 0
    sdk_shims.uninstall()
    try:
        monkeypatch.setattr(sdk_shims, "install", lambda version=None: False)
        asked = await _gate_counting_sandbox_calls(env, f"{task_queue}-sdk", monkeypatch)
    finally:
        sdk_shims.install()
    assert asked > 2 * len(FIVE)  # several passes over each check's payloads
