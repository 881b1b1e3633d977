"""The changeguard command on the real dev server, against the real fleet over HTTP."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import httpx
import yaml
from temporalio.testing import WorkflowEnvironment

from demo.fleet import FleetServer
from tests.integration.conftest import Cli, write_change
from workflows.models import ChangeResult, Outcome


async def test_change_completes_and_ledger_agrees(
    cli: Cli, worker: None, fleet: FleetServer, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    """Start --wait completes a real change; each target deployed once; status --json agrees."""
    change_id = f"it-{uuid.uuid4().hex[:8]}"
    path = write_change(tmp_path / "change.yaml", fleet.url, change_id)

    started = await cli("start", str(path), "--wait", "--json")
    assert started.code == 0, started.stderr
    result = started.json()
    assert result["outcome"] == "completed"
    assert result["report"]["decision"] == "proceed"
    assert [c["guardrail"] for c in result["report"]["checks"]] == ["http-health", "change-window"]

    async with httpx.AsyncClient(base_url=fleet.url) as http:
        ledger = (await http.get("/deploys")).json()
        hosts = {h["id"]: h["version"] for h in (await http.get("/hosts")).json()}
    ours = sorted(d["host"] for d in ledger if d["idempotency_key"].startswith(f"{change_id}:"))
    assert ours == ["web-01", "web-02", "web-03", "web-04"]
    assert [hosts[h] for h in ours] == ["1.1.0"] * 4
    assert hosts["web-05"] == "1.0.0"

    status = await cli("status", change_id, "--json")
    assert status.code == 0
    doc = status.json()
    assert (doc["phase"], doc["outcome"]) == ("Completed", "completed")
    assert sorted(doc["applied"]) == ours
    assert [sorted(w["applied"]) for w in doc["waves"]] == [
        ["web-01"],
        ["web-02"],
        ["web-03", "web-04"],
    ]  # within a wave, targets apply in parallel: any order

    again = await cli("start", str(path))
    assert again.code == 2
    assert "exists or existed already" in again.stderr

    desc = await dev_env.client.get_workflow_handle(change_id).describe()
    attrs = {k.name: v for k, v in desc.typed_search_attributes}  # type: ignore[attr-defined]
    assert attrs["ChangePhase"] == "Completed"
    assert attrs["ChangeTargets"] == ["web-01", "web-02", "web-03", "web-04"]


async def test_invalid_change_file_lists_every_mistake(
    cli: Cli, fleet: FleetServer, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    """A file with several mistakes exits 2, lists each by field, and starts no workflow."""
    change_id = f"bad-{uuid.uuid4().hex[:8]}"
    path = write_change(
        tmp_path / "bad.yaml",
        fleet.url,
        change_id,
        summary="",
        targets=[{"id": "web-01"}, {"id": "web-01"}],
        params={"base_url": "ftp://nope", "version": ""},
        rollout={"waves": ["50%"], "max_parallel": 0},
        deadline="2026-12-01T10:00:00",
    )
    res = await cli("start", str(path))
    assert res.code == 2
    for field in (
        "summary:",
        "rollout.waves:",
        "rollout.max_parallel:",
        "deadline:",
        "params.base_url:",
        "params.version:",
    ):
        assert field in res.stderr, field
    count = await dev_env.client.count_workflows(f"WorkflowId = '{change_id}'")
    assert count.count == 0


async def test_checks_runs_the_gate_only(
    cli: Cli, worker: None, fleet: FleetServer, tmp_path: Path
) -> None:
    """Checks prints the gate's report, exits 3 when it blocks, and mutates nothing."""
    path = write_change(tmp_path / "c.yaml", fleet.url, f"chk-{uuid.uuid4().hex[:8]}")
    doc = path.read_text().replace(f"{fleet.url}/healthz", f"{fleet.url}/nope")
    path.write_text(doc)
    res = await cli("checks", str(path), "--json")
    assert res.code == 3, res.stderr
    report = res.json()
    assert report["decision"] == "block"
    health = report["checks"][0]
    assert (health["status"], health["owner"]) == ("fail", "web-team")
    assert "404" in health["reason"]
    async with httpx.AsyncClient(base_url=fleet.url) as http:
        assert (await http.get("/deploys")).json() == []


async def test_unreachable_server_exits_4(tmp_path: Path) -> None:
    """With no Temporal at the address, commands exit 4 and say where they looked."""
    res = await Cli("127.0.0.1:1", "x")("status", "anything")
    assert res.code == 4
    assert "127.0.0.1:1" in res.stderr


async def test_unknown_change_ids_exit_2_without_a_traceback(cli: Cli) -> None:
    """status, recheck, approve and abort on an id no change has: exit 2 and say so."""
    for args in (
        ("status", "no-such-change"),
        ("recheck", "no-such-change"),
        ("approve", "no-such-change", "--guardrail", "g", "--approver", "bob", "--reason", "r"),
        ("abort", "no-such-change", "--operator", "bob", "--reason", "r"),
    ):
        res = await cli(*args)
        assert res.code == 2, (args, res.stderr)
        assert "no running change with id 'no-such-change'" in res.stderr, args
        assert "Traceback" not in res.stderr


async def test_status_shows_retrying_mutations_and_the_open_breaker(
    cli: Cli, worker: None, fleet: FleetServer, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    """While the target API fails, status lists the retrying mutations; the breaker's refusals too."""
    async with httpx.AsyncClient(base_url=fleet.url) as http:
        (await http.post("/admin/faults", json={"fail_next": 1000})).raise_for_status()
    change_id = f"brk-{uuid.uuid4().hex[:8]}"
    path = write_change(
        tmp_path / "c.yaml", fleet.url, change_id, rollout={"waves": ["100%"], "max_parallel": 4}
    )
    assert (await cli("start", str(path))).code == 0
    seen: set[str] = set()
    for _ in range(60):
        doc = (await cli("status", change_id, "--json")).json()
        seen |= {w["last_failure"].split(":")[0] for w in doc["pending"] if w["last_failure"]}
        if "CircuitOpen" in seen:
            break
        await asyncio.sleep(0.5)
    await dev_env.client.get_workflow_handle(change_id).terminate("test done")
    assert {"TargetUnavailable", "CircuitOpen"} <= seen
    # http-deploy applies a small wave in chunks: one apply_change_many per chunk of targets.
    assert all(w["activity"] == "apply_change_many" for w in doc["pending"])
    assert all(w["target"] for w in doc["pending"]), "each chunk names the target it is on"


async def test_start_without_an_id_generates_one_at_the_edge(
    cli: Cli, worker: None, fleet: FleetServer, tmp_path: Path, dev_env: WorkflowEnvironment
) -> None:
    """A change file without change_id starts as chg-<12 hex>, the workflow id and change id."""
    path = write_change(tmp_path / "change.yaml", fleet.url, "unused")
    doc = yaml.safe_load(path.read_text())
    del doc["change_id"]
    path.write_text(yaml.safe_dump(doc))
    started = await cli("start", str(path), "--json")
    assert started.code == 0, started.stderr
    change_id = started.json()["change_id"]
    assert re.fullmatch(r"chg-[0-9a-f]{12}", change_id)
    result = await dev_env.client.get_workflow_handle(change_id, result_type=ChangeResult).result()
    assert (result.change_id, result.outcome) == (change_id, Outcome.COMPLETED)


async def test_a_worker_without_a_bundle_refuses_to_start(cli: Cli, tmp_path: Path) -> None:
    """No CHANGEGUARD_POLICY: exit 2 with one line saying how to set it (fail closed)."""
    res = await cli("worker", env={"CHANGEGUARD_POLICY": ""})
    assert res.code == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "set CHANGEGUARD_POLICY" in lines[0], res.stderr


async def test_a_worker_with_an_invalid_bundle_lists_every_problem(
    cli: Cli, tmp_path: Path
) -> None:
    """An invalid bundle: exit 2, every problem located by file and line."""
    bundle = tmp_path / "platform"
    bundle.mkdir()
    (bundle / "a.yaml").write_text("unmatched: reject\nguardrails:\n  - use: nope\n")
    (bundle / "b.yaml").write_text("unmatched: allow\n")
    res = await cli("worker", env={"CHANGEGUARD_POLICY": str(bundle)})
    assert res.code == 2, res.stderr
    flat = " ".join(res.stderr.split())
    assert "a.yaml:3: guardrails[0].use: no guardrail named 'nope'" in flat
    assert "b.yaml:1: unmatched: set to allow here" in flat


async def test_a_misconfigured_audit_store_exits_4_with_the_fix(cli: Cli, tmp_path: Path) -> None:
    """An audit URL no store answers to: one line naming the fix, exit 4."""
    res = await cli("worker", env={"CHANGEGUARD_AUDIT_URL": "redis://localhost/0"})
    assert res.code == 4, res.stderr
    assert "fix CHANGEGUARD_AUDIT_URL" in " ".join(res.stderr.split())
