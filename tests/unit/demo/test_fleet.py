"""The demo fleet over real HTTP: idempotent deploys, the ledger, metrics, faults, persistence."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.fleet import FleetServer

KEY = "chg-1:apply:web-01"


async def deploy(
    fleet_client: httpx.AsyncClient, host: str, version: str, key: str | None = KEY
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await fleet_client.post(
        f"/hosts/{host}/deploy", json={"version": version}, headers=headers
    )


async def ledger(fleet_client: httpx.AsyncClient, **query: str) -> list[dict[str, Any]]:
    """Fetch the ledger, checking each timestamp is ISO 8601 and dropping it."""
    rows: list[dict[str, Any]] = (await fleet_client.get("/deploys", params=query)).json()
    for row in rows:
        datetime.fromisoformat(row.pop("at"))
    return rows


async def version_of(fleet_client: httpx.AsyncClient, host: str) -> str:
    return str((await fleet_client.get(f"/hosts/{host}")).json()["version"])


_SAMPLE = re.compile(r'^([a-z_]+)\{((?:[a-z_]+="[^"]*",?)*)\} (\S+)$')


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse Prometheus text into {(name, labels): value}; fail on any malformed line."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed sample line: {line!r}"
        labels = frozenset(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2)))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def sample(
    metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return metrics[(name, frozenset(labels.items()))]


async def test_hosts_are_seeded(fleet_client: httpx.AsyncClient) -> None:
    """A new fleet has web-01..web-06 in prod on 1.0.0, healthy, zones alternating a/b."""
    hosts = (await fleet_client.get("/hosts")).json()
    assert hosts == [
        {
            "id": f"web-0{i}",
            "environment": "prod",
            "labels": {"role": "web", "zone": "a" if i % 2 else "b"},
            "version": "1.0.0",
            "healthy": True,
            "error_rate": 0.001,
        }
        for i in range(1, 7)
    ]
    assert (await fleet_client.get("/hosts/web-03")).json() == hosts[2]
    assert (await fleet_client.get("/healthz")).json() == {"ok": True}


async def test_deploy_changes_version_and_appends_ledger(fleet_client: httpx.AsyncClient) -> None:
    """A deploy sets the host's version and records one ledger entry for its key."""
    response = await deploy(fleet_client, "web-01", "2.0.0")
    assert response.status_code == 200
    assert "Idempotent-Replayed" not in response.headers
    assert response.json() == {
        "host": "web-01",
        "from_version": "1.0.0",
        "to_version": "2.0.0",
        "idempotency_key": KEY,
        "seq": 1,
        "applied": True,
    }
    assert await version_of(fleet_client, "web-01") == "2.0.0"
    assert await version_of(fleet_client, "web-02") == "1.0.0"
    entry = {
        "seq": 1,
        "idempotency_key": KEY,
        "host": "web-01",
        "from_version": "1.0.0",
        "to_version": "2.0.0",
    }
    assert await ledger(fleet_client) == [entry]
    assert await ledger(fleet_client, key=KEY) == [entry]
    assert await ledger(fleet_client, host="web-02") == []


async def test_replayed_key_returns_first_result_and_applies_nothing(
    fleet_client: httpx.AsyncClient,
) -> None:
    """Replaying a key returns its first result with the replay header and changes nothing."""
    first = await deploy(fleet_client, "web-01", "2.0.0")
    await deploy(fleet_client, "web-01", "3.0.0", key="chg-2:apply:web-01")

    replay = await deploy(fleet_client, "web-01", "2.0.0")

    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == first.json()
    assert len(await ledger(fleet_client)) == 2
    assert await version_of(fleet_client, "web-01") == "3.0.0"  # not set back to 2.0.0


async def test_key_reused_for_another_request_conflicts(fleet_client: httpx.AsyncClient) -> None:
    """The same key with another version or host is refused with 409 and applies nothing."""
    await deploy(fleet_client, "web-01", "2.0.0")

    other_version = await deploy(fleet_client, "web-01", "3.0.0")
    other_host = await deploy(fleet_client, "web-02", "2.0.0")

    for response in (other_version, other_host):
        assert response.status_code == 409
        assert response.json()["code"] == "idempotency_key_reused"
    assert len(await ledger(fleet_client)) == 1
    assert [await version_of(fleet_client, h) for h in ("web-01", "web-02")] == ["2.0.0", "1.0.0"]


async def test_deploy_without_key_is_refused(fleet_client: httpx.AsyncClient) -> None:
    """A deploy with no (or a blank) Idempotency-Key is a 400 that explains the header."""
    for key in (None, ""):
        response = await deploy(fleet_client, "web-01", "2.0.0", key=key)
        assert response.status_code == 400
        assert "Idempotency-Key" in response.json()["error"]
    assert await ledger(fleet_client) == []


async def test_invalid_body_is_refused(fleet_client: httpx.AsyncClient) -> None:
    """A deploy body without a version, or with extra fields, is a 422."""
    for body in ({}, {"version": ""}, {"version": "2.0.0", "force": True}):
        response = await fleet_client.post(
            "/hosts/web-01/deploy", json=body, headers={"Idempotency-Key": KEY}
        )
        assert (response.status_code, response.json()["code"]) == (422, "invalid_body")
    assert await ledger(fleet_client) == []


async def test_unknown_host_is_404(fleet_client: httpx.AsyncClient) -> None:
    """An unknown host is a JSON 404 on read and on deploy, and nothing is recorded."""
    read = await fleet_client.get("/hosts/web-99")
    write = await deploy(fleet_client, "web-99", "2.0.0")

    assert (read.status_code, read.json()) == (
        404,
        {"error": "unknown host 'web-99'", "code": "unknown_host"},
    )
    assert (write.status_code, write.json()) == (read.status_code, read.json())
    assert await ledger(fleet_client) == []


async def test_concurrent_same_key_deploys_apply_once(fleet_client: httpx.AsyncClient) -> None:
    """Ten overlapping deploys with one key apply once; the other nine are replays."""
    await fleet_client.post("/admin/faults", json={"deploy_delay_ms": 100})

    responses = await asyncio.gather(*(deploy(fleet_client, "web-01", "2.0.0") for _ in range(10)))

    assert [r.status_code for r in responses] == [200] * 10
    assert len({r.text for r in responses}) == 1
    replayed = sorted(r.headers.get("Idempotent-Replayed", "no") for r in responses)
    assert replayed == ["no"] + ["true"] * 9
    assert len(await ledger(fleet_client)) == 1


async def test_metrics_expose_versions_and_bad_version_error_ratio(
    fleet_client: httpx.AsyncClient,
) -> None:
    """Metrics parse; a host on a version marked bad shows an error ratio of at least 0.1."""
    marked = await fleet_client.post("/versions/2.0.0", json={"bad": True})
    assert marked.json() == {"version": "2.0.0", "bad": True}
    assert (await fleet_client.get("/versions")).json() == [{"version": "2.0.0", "bad": True}]
    await deploy(fleet_client, "web-02", "2.0.0")

    response = await fleet_client.get("/metrics")
    await asyncio.sleep(0.5)
    later = parse_metrics((await fleet_client.get("/metrics")).text)

    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    before = parse_metrics(response.text)
    hosts = [f"web-0{i}" for i in range(1, 7)]
    assert {h: sample(before, "fleet_error_ratio", host=h) for h in hosts} == {
        h: 0.2 if h == "web-02" else 0.001 for h in hosts
    }
    assert sample(before, "fleet_host_version", host="web-02", version="2.0.0") == 1
    assert sample(before, "fleet_host_version", host="web-01", version="1.0.0") == 1
    served = {
        h: sample(later, "fleet_requests_total", host=h)
        - sample(before, "fleet_requests_total", host=h)
        for h in hosts
    }
    errors = sample(later, "fleet_errors_total", host="web-02") - sample(
        before, "fleet_errors_total", host="web-02"
    )
    assert all(n >= 20 for n in served.values()), served  # 50 req/s for 0.5 s, floored
    assert errors / served["web-02"] >= 0.1
    host = (await fleet_client.get("/hosts/web-02")).json()
    assert (host["healthy"], host["error_rate"]) == (False, 0.2)


async def test_fail_next_faults_answer_503_and_apply_nothing(
    fleet_client: httpx.AsyncClient,
) -> None:
    """With fail_next=2 the next two deploys are 503s that record nothing; the third applies."""
    set_faults = await fleet_client.post("/admin/faults", json={"fail_next": 2})
    assert set_faults.json() == {"fail_next": 2, "deploy_delay_ms": 0, "silent_drains": 0}

    statuses = [(await deploy(fleet_client, "web-01", "2.0.0")).status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert (await fleet_client.get("/admin/faults")).json() == {
        "fail_next": 0,
        "deploy_delay_ms": 0,
        "silent_drains": 0,
    }
    assert [e["seq"] for e in await ledger(fleet_client)] == [1]


async def test_state_persists_across_restart(tmp_path: Path) -> None:
    """Versions, marks and the ledger survive a restart on the same file; seeding happens once."""
    db = tmp_path / "fleet.db"
    with FleetServer(db) as fleet:
        async with httpx.AsyncClient(base_url=fleet.url, trust_env=False) as fleet_client:
            first = await deploy(fleet_client, "web-01", "2.0.0")
            await fleet_client.post("/versions/2.0.0", json={"bad": True})

    with FleetServer(db, hosts=3) as fleet:
        async with httpx.AsyncClient(base_url=fleet.url, trust_env=False) as fleet_client:
            hosts = (await fleet_client.get("/hosts")).json()
            replay = await deploy(fleet_client, "web-01", "2.0.0")
            assert [h["id"] for h in hosts] == [f"web-0{i}" for i in range(1, 7)]
            assert (hosts[0]["version"], hosts[0]["healthy"]) == ("2.0.0", False)
            assert (replay.json(), replay.headers["Idempotent-Replayed"]) == (first.json(), "true")
            assert len(await ledger(fleet_client)) == 1


def test_start_fails_clearly_when_port_is_taken(fleet: FleetServer, tmp_path: Path) -> None:
    """Starting on a port already in use raises a RuntimeError naming the address."""
    with pytest.raises(RuntimeError, match=f"127.0.0.1:{fleet.port}"):
        FleetServer(tmp_path / "other.db", port=fleet.port).start()
