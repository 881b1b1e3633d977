"""The target-state guardrail against the real demo fleet, through the real http-deploy kind."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from activities.kinds.base import ChangeKind
from activities.kinds.base import new_registry as new_kind_registry
from activities.kinds.http_deploy import HttpDeploy
from demo.fleet import FleetServer
from guardrails.base import CheckContext, Services, new_registry, params_errors
from guardrails.builtin.target_state import TargetStateGuardrail, TargetStateParams
from guardrails.plugins import PluginRegistry
from workflows.models import (
    ApplyResult,
    Category,
    ChangeContext,
    CheckResult,
    CheckSpec,
    CheckStatus,
    OptOut,
    Target,
    TargetState,
)

HOSTS = [f"web-0{i}" for i in range(1, 7)]
NOW = datetime(2026, 6, 11, 8, 0, tzinfo=UTC)


@pytest.fixture
def kinds() -> PluginRegistry[Any]:
    registry = new_kind_registry()
    registry.register(HttpDeploy)
    return registry


async def deploy(fleet_client: httpx.AsyncClient, host: str, version: str) -> None:
    response = await fleet_client.post(
        f"/hosts/{host}/deploy",
        json={"version": version},
        headers={"Idempotency-Key": f"test-{uuid.uuid4().hex}"},
    )
    response.raise_for_status()


async def mark_bad(fleet_client: httpx.AsyncClient, version: str) -> None:
    (await fleet_client.post(f"/versions/{version}", json={"bad": True})).raise_for_status()


def make_ctx(
    base_url: str,
    targets: list[str],
    *,
    kinds: PluginRegistry[Any] | None,
    kind: str = "http-deploy",
) -> CheckContext:
    spec = CheckSpec(
        guardrail="target-state",
        category=Category.TARGET_STATE,
        owner="service-owners",
        timeout=timedelta(seconds=60),
    )
    change = ChangeContext(
        change_id="chg-1",
        kind=kind,
        environment="prod",
        team="web",
        requester="alice",
        targets=[Target(id=t) for t in targets],
        params={"base_url": base_url, "version": "1.1.0", "timeout": 5},
    )
    return CheckContext(change=change, spec=spec, now=NOW, services=Services(change_kinds=kinds))


async def run(params: dict[str, Any], ctx: CheckContext) -> CheckResult:
    guardrail = TargetStateGuardrail()
    return await guardrail.check(guardrail.parse_params(params), ctx)


def state(version: str | None, *, healthy: bool = True, reachable: bool = True) -> dict[str, Any]:
    return {"reachable": reachable, "healthy": healthy, "version": version}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_all_good_passes(fleet: FleetServer, kinds: PluginRegistry[Any]) -> None:
    """Six fresh hosts at 1.0.0 pass, and the evidence shows each one's state."""
    result = await run({"expect_version": "1.0.0"}, make_ctx(fleet.url, HOSTS, kinds=kinds))
    assert result == CheckResult(
        guardrail="target-state",
        category=Category.TARGET_STATE,
        status=CheckStatus.PASS,
        reason="6 targets reachable, healthy, at 1.0.0",
        owner="service-owners",
        evidence={
            "expect_version": "1.0.0",
            "require_healthy": True,
            "max_unreachable": 0,
            "targets": {h: state("1.0.0") for h in HOSTS},
            "omitted": 0,
        },
    )


async def test_drift_is_listed_by_target(
    fleet: FleetServer, fleet_client: httpx.AsyncClient, kinds: PluginRegistry[Any]
) -> None:
    """Hosts off the baseline are named with the version found and the one expected."""
    await deploy(fleet_client, "web-05", "0.9.0")
    await deploy(fleet_client, "web-02", "1.0.1")
    result = await run({"expect_version": "1.0.0"}, make_ctx(fleet.url, HOSTS, kinds=kinds))
    assert (result.status, result.reason, result.remedy) == (
        CheckStatus.FAIL,
        "2 of 6 targets are not in a known-good state: "
        "web-02 at 1.0.1, expected 1.0.0; web-05 at 0.9.0, expected 1.0.0",
        "bring web-02, web-05 back to 1.0.0 or change expect_version if the baseline has "
        "moved, then recheck",
    )
    assert result.evidence["targets"]["web-05"] == state("0.9.0")


async def test_without_expected_version_drift_is_ignored(
    fleet: FleetServer, fleet_client: httpx.AsyncClient, kinds: PluginRegistry[Any]
) -> None:
    """With no expect_version a mixed fleet passes as long as it is reachable and healthy."""
    await deploy(fleet_client, "web-05", "0.9.0")
    result = await run({}, make_ctx(fleet.url, HOSTS, kinds=kinds))
    assert (result.status, result.reason) == (CheckStatus.PASS, "6 targets reachable, healthy")


async def test_unhealthy_is_listed(
    fleet: FleetServer, fleet_client: httpx.AsyncClient, kinds: PluginRegistry[Any]
) -> None:
    """A host running a version marked bad is named as unhealthy; require_healthy=false allows it."""
    await deploy(fleet_client, "web-06", "1.0.1")
    await mark_bad(fleet_client, "1.0.1")
    ctx = make_ctx(fleet.url, HOSTS, kinds=kinds)
    result = await run({}, ctx)
    assert (result.status, result.reason, result.remedy) == (
        CheckStatus.FAIL,
        "1 of 6 targets is not in a known-good state: web-06 unhealthy",
        "repair web-06 until it reports healthy, then recheck",
    )
    assert result.evidence["targets"]["web-06"] == state("1.0.1", healthy=False)
    lenient = await run({"require_healthy": False}, ctx)
    assert (lenient.status, lenient.reason) == (CheckStatus.PASS, "6 targets reachable")


async def test_drifted_and_unhealthy_on_one_target(
    fleet: FleetServer, fleet_client: httpx.AsyncClient, kinds: PluginRegistry[Any]
) -> None:
    """One host both off the baseline and unhealthy is listed once with both problems."""
    await deploy(fleet_client, "web-03", "0.9.0")
    await mark_bad(fleet_client, "0.9.0")
    result = await run({"expect_version": "1.0.0"}, make_ctx(fleet.url, HOSTS, kinds=kinds))
    assert result.reason == (
        "1 of 6 targets is not in a known-good state: web-03 at 0.9.0, expected 1.0.0 and unhealthy"
    )
    assert result.remedy == (
        "bring web-03 back to 1.0.0 or change expect_version if the baseline has moved; "
        "repair web-03 until it reports healthy, then recheck"
    )


async def test_unreachable_is_listed_and_max_unreachable_honoured(
    fleet: FleetServer, fleet_client: httpx.AsyncClient, kinds: PluginRegistry[Any]
) -> None:
    """A host the fleet does not know is unreachable: it fails at 0 and is tolerated at 1."""
    await deploy(fleet_client, "web-05", "0.9.0")
    ctx = make_ctx(fleet.url, [*HOSTS, "web-99"], kinds=kinds)
    strict = await run({"expect_version": "1.0.0"}, ctx)
    assert strict.status is CheckStatus.FAIL
    assert strict.reason.startswith("2 of 7 targets are not in a known-good state: ")
    assert ": web-05 at 0.9.0, expected 1.0.0; web-99 unreachable (GET " in strict.reason
    assert strict.reason.endswith("answered 404: unknown host 'web-99')")
    assert strict.remedy == (
        "bring web-05 back to 1.0.0 or change expect_version if the baseline has moved; "
        "restore web-99 until it answers again or remove it from the change "
        "(1 is unreachable, max_unreachable is 0), then recheck"
    )
    evidence = strict.evidence["targets"]["web-99"]
    assert (evidence["reachable"], evidence["healthy"], evidence["version"]) == (False, False, None)
    assert "404" in evidence["error"]

    await deploy(fleet_client, "web-05", "1.0.0")
    tolerant = await run({"expect_version": "1.0.0", "max_unreachable": 1}, ctx)
    assert tolerant.status is CheckStatus.PASS
    assert tolerant.reason.startswith("6 of 7 targets reachable, healthy, at 1.0.0; web-99 ")
    assert tolerant.reason.endswith(", tolerated by max_unreachable=1)")


async def test_fleet_down_names_the_connection_error(kinds: PluginRegistry[Any]) -> None:
    """When the fleet cannot be reached every target is unreachable, with the transport error."""
    url = f"http://127.0.0.1:{closed_port()}"
    result = await run({"max_unreachable": 1}, make_ctx(url, ["web-01", "web-02"], kinds=kinds))
    assert result.status is CheckStatus.FAIL
    assert result.reason.startswith("2 of 2 targets are not in a known-good state: web-01 ")
    assert "ConnectError" in result.reason
    assert "(2 are unreachable, max_unreachable is 1)" in result.remedy


async def test_bounded_concurrency_describes_every_target(
    fleet: FleetServer, kinds: PluginRegistry[Any]
) -> None:
    """With concurrency 1 every target is still described, in order."""
    result = await run({"concurrency": 1}, make_ctx(fleet.url, HOSTS, kinds=kinds))
    assert list(result.evidence["targets"]) == HOSTS


async def test_unknown_kind_is_an_error(fleet: FleetServer, kinds: PluginRegistry[Any]) -> None:
    """A change kind the worker does not have makes the check error (fail-closed)."""
    result = await run({}, make_ctx(fleet.url, HOSTS, kinds=kinds, kind="helm-upgrade"))
    assert (result.status, result.reason, result.remedy) == (
        CheckStatus.ERROR,
        "target-state cannot describe targets: no change kind named 'helm-upgrade' is "
        "registered (known: http-deploy)",
        "install the plug-in that provides change kind 'helm-upgrade' on the worker, or fix "
        "the change's kind",
    )


async def test_missing_service_is_an_error(fleet: FleetServer) -> None:
    """Without the change-kind registry in services the check errors and says how to fix it."""
    result = await run({}, make_ctx(fleet.url, HOSTS, kinds=None))
    assert result.status is CheckStatus.ERROR
    assert result.reason == (
        "target-state cannot describe targets: the worker provides no 'change_kinds' service"
    )


async def test_invalid_change_params_are_an_error(kinds: PluginRegistry[Any]) -> None:
    """Params the kind rejects make the check error, naming the bad field."""
    result = await run({}, make_ctx("ftp://nowhere", HOSTS, kinds=kinds))
    assert result.status is CheckStatus.ERROR
    assert result.reason.startswith(
        "target-state cannot describe targets: the change's params are invalid for "
        "http-deploy: params.base_url: "
    )


async def test_every_non_pass_says_why_what_and_who(
    fleet: FleetServer, fleet_client: httpx.AsyncClient, kinds: PluginRegistry[Any]
) -> None:
    """I5: drift, ill health, unreachability and errors all carry reason, remedy and owner."""
    await deploy(fleet_client, "web-05", "0.9.0")
    await deploy(fleet_client, "web-06", "1.0.1")
    await mark_bad(fleet_client, "1.0.1")
    results = [
        await run({"expect_version": "1.0.0"}, make_ctx(fleet.url, HOSTS, kinds=kinds)),
        await run({}, make_ctx(fleet.url, ["web-99"], kinds=kinds)),
        await run({}, make_ctx(fleet.url, HOSTS, kinds=kinds, kind="nope")),
        await run({}, make_ctx(fleet.url, HOSTS, kinds=None)),
    ]
    assert [r.status for r in results] == [CheckStatus.FAIL] * 2 + [CheckStatus.ERROR] * 2
    for r in results:
        assert all((r.reason, r.remedy, r.owner)), r


class _Synthetic(ChangeKind[Any]):
    """A kind whose describe reports web-0500 drifted and raises for web-0007."""

    name = "synthetic"
    params_model = TargetStateParams  # any strict model with defaults will do

    async def apply(self, params: Any, target: Target, *, idempotency_key: str) -> ApplyResult:
        raise NotImplementedError

    async def revert_if_applied(
        self, params: Any, target: Target, *, applied_key: str, idempotency_key: str
    ) -> ApplyResult:
        raise NotImplementedError

    async def describe(self, params: Any, target: Target) -> TargetState:
        if target.id == "web-0007":
            raise RuntimeError("agent crashed")
        version = "0.9.0" if target.id == "web-0500" else "1.0.0"
        return TargetState(target_id=target.id, reachable=True, healthy=True, version=version)


async def test_raising_describe_is_unreachable_and_evidence_is_capped() -> None:
    """A describe that raises marks its target unreachable; evidence keeps problems past the cap."""
    kinds = new_kind_registry()
    kinds.register(_Synthetic)
    ids = [f"web-{i:04d}" for i in range(1, 601)]
    ctx = make_ctx("http://unused", ids, kinds=kinds, kind="synthetic")
    ctx.change.params = {}
    result = await run({"expect_version": "1.0.0"}, ctx)
    assert result.reason == (
        "2 of 600 targets are not in a known-good state: web-0007 unreachable "
        "(describe raised RuntimeError: agent crashed); web-0500 at 0.9.0, expected 1.0.0"
    )
    shown = result.evidence["targets"]
    assert (len(shown), result.evidence["omitted"]) == (500, 100)
    assert shown["web-0007"] == {
        **state(None, healthy=False, reachable=False),
        "error": ("describe raised RuntimeError: agent crashed"),
    }
    assert shown["web-0500"] == state("0.9.0")


def test_params_are_strict() -> None:
    """Unknown fields, negative tolerances and zero concurrency are params errors."""
    problems = params_errors(
        TargetStateGuardrail(), {"max_unreachable": -1, "concurrency": 0, "expect": "1.0"}
    )
    assert problems == [
        "params.max_unreachable: Input should be greater than or equal to 0",
        "params.concurrency: Input should be greater than or equal to 1",
        "params.expect: unknown field",
    ]


def test_registers_against_the_contract() -> None:
    """TargetStateGuardrail meets the guardrail contract with its documented defaults."""
    registry = new_registry()
    registry.register(TargetStateGuardrail)
    guardrail = registry.get("target-state")
    assert (
        guardrail.category,
        guardrail.default_owner,
        guardrail.default_opt_out,
        guardrail.params_model,
    ) == (Category.TARGET_STATE, "service-owners", OptOut.APPROVABLE, TargetStateParams)
