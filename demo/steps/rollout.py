"""Steps 4-6: a change once the gate lets it through: waves, bakes, pages and the saga's undo.

4. a good version rolls out in waves, each baking on the fleet's error rate;
5. a bad version: the error rate rises, nobody answers the page, every host is rolled back;
6. an emergency freeze declared mid-bake pauses the change before its next wave; aborted, undone.
"""

from __future__ import annotations

import httpx

from demo.harness import Demo, StepResult, expect
from demo.live import Watch
from demo.narration import fleet_table, operator, say
from workflows.models import Phase


async def step_good(d: Demo, r: StepResult) -> None:
    """Step 4: waves with bakes on the fleet's error rate, and completion."""
    before = await d.hosts()
    say(
        "Outside any freeze (the platform bundle alone), alice rolls web 1.1.0 out to all "
        "six hosts in waves of 1 host, 50 % and 100 %, at most 3 at once. After each wave the "
        "change bakes for 2 s while the worker reads the fleet's per-host error rate; before "
        "each later wave the timing guardrails run again (the world may have caught fire)."
    )
    handle = await d.start("deploy-good.yaml", r.change_id)
    w = Watch(handle, "1.1.0")
    s = await w.end(within=90)
    r.outcome = s.outcome
    expect(all(wave.state == "done" for wave in s.waves), f"waves not all done: {s.waves}")
    counts, hosts = await d.deploys(r.change_id), await d.hosts()
    fleet_table("The fleet after the rollout", before, hosts, counts)
    expect(
        counts == dict.fromkeys(hosts, 1) and set(hosts.values()) == {"1.1.0"},
        "every host should run 1.1.0, deployed exactly once by this change",
    )
    say(
        "Every wave baked with the error rate ok, so the change completed. The fleet's own ledger "
        "shows one deploy per host: each deploy carries an idempotency key, so a retried activity "
        "never deploys twice."
    )


async def step_bad(d: Demo, r: StepResult) -> None:
    """Step 5: the error rate rises, the policy pages, nobody answers, everything rolls back."""
    before = await d.hosts()
    say(
        "Then web 1.2.0 goes out the same way. It has a bug that only shows under real traffic: "
        "once wave 2 starts, the demo marks 1.2.0 bad on the fleet, and every host running it "
        "fails 20 % of its requests. The platform answers a degraded error rate (at or above 1 %) "
        "with pause_and_page (5 s to answer, then rollback) and a critical one with rollback."
    )
    handle = await d.start("deploy-bad.yaml", r.change_id)
    w = Watch(handle, "1.2.0", pause_timeout=5)
    await w.until(lambda s: len(s.waves) > 1 and s.waves[1].state != "pending", "wave 2", within=60)
    async with httpx.AsyncClient(base_url=d.stack.fleet.url, trust_env=False) as http:
        (await http.post("/versions/1.2.0", json={"bad": True})).raise_for_status()
    say("  [bold red]the fleet now fails 20 % of requests on every host running 1.2.0[/]")
    s = await w.until(lambda s: s.phase is Phase.PAUSED, "a pause and a page")
    for page in d.stand_ins.pages:
        say(
            f"  [bold magenta]the on-call pager's inbox received a {page.get('severity')} page "
            f"for team {page.get('owner')}[/] (dedup key {page.get('dedup_key')})"
        )
    operator(f"changeguard resume {r.change_id} --operator bob --reason 'known noisy host'")
    operator(f"changeguard rollback {r.change_id} --operator bob --reason 'errors are real'")
    say(
        "Either would answer the page. Nobody does (it is a demo): after 5 s the policy's "
        "`then: rollback` decides."
    )
    s = await w.end(within=60)
    r.outcome = s.outcome
    hosts = await d.hosts()
    fleet_table("The fleet before and after", before, hosts, None)
    expect(bool(s.pages) and bool(d.stand_ins.pages), "nobody was paged")
    expect(hosts == before, "some hosts do not run the version they ran before the change")
    expect(bool(s.reverted), "nothing was reverted")
    say(
        f"The page timed out, so the policy's `then: rollback` applied: the saga undid every "
        f"applied step in reverse ({', '.join(s.reverted)}), each undo registered before its "
        "deploy ran. The fleet confirms every host runs the version it ran before."
    )


async def step_frozen(d: Demo, r: StepResult) -> None:
    """Step 6: an emergency freeze declared while a wave bakes stops the change before the next."""
    before = await d.hosts()
    say(
        "alice rolls web 1.3.0 out in two waves (1 host, then the rest), baking 8 s after the "
        "first. While web-01 bakes, an incident starts and the platform declares a freeze again."
    )
    handle = await d.start("deploy-frozen.yaml", r.change_id)
    w = Watch(handle, "1.3.0")
    s = await w.until(
        lambda s: s.phase is Phase.BAKING and bool(s.waves) and s.waves[0].state != "pending",
        "the first wave's bake",
        within=60,
    )
    frozen = await d.declare_freeze()
    s = await w.until(
        lambda s: (
            s.phase is Phase.PAUSED
            and s.wave_timing is not None
            and any(t.rule == "incident-freeze" and not t.fits for t in s.wave_timing.rules)
        ),
        "the freeze before wave 2",
        within=60,
    )
    say(f"  [bold]{s.phase.value}[/]: {s.message}")
    expect(
        s.waves[0].applied == ["web-01"] and not (len(s.waves) > 1 and s.waves[1].applied),
        f"only wave 1 (web-01) should be applied; the waves are {s.waves}",
    )
    say(
        "Before wave 2 the change checked its timing against the bundle the worker holds now "
        f"([bold]{frozen}[/]): the freeze closes the window, so wave 2 never started. The freeze "
        "rule's mid_rollout choice is pause: a half-changed fleet is the team's call, so the "
        "change paused and paged its team instead of going on or leaving it unattended."
    )
    say("\nalice will not wait the incident out: she aborts, and the first wave is undone.")
    await d.abort(r.change_id, "alice", "incident freeze")
    s = await w.end(within=60)
    r.outcome = s.outcome
    hosts = await d.hosts()
    expect(hosts == before, f"every host should run what it ran before; the fleet says {hosts}")
    expect(s.reverted == ["web-01"], f"web-01 should have been reverted, not {s.reverted}")
    await d.lift_freeze()
