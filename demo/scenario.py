"""The demo: six changes against the demo fleet that show what changeguard is for.

Run by ``changeguard demo`` (and ``make demo``) on a fresh stack: the Temporal dev server in memory
with its Web UI, the fleet (six hosts on 1.0.0, a fresh SQLite file), a worker in this process
holding the platform's policy bundle (a copy of ``demo/platform`` the demo edits as the platform
team would), the operator directory ``demo/operators.yaml``, an audit store in a temporary
directory, and the :class:`~demo.stack.StandIns` (the session store's health endpoint, the on-call
pager's inbox).

1. The platform declares an incident freeze (a file added to the bundle, live). A change is
   blocked with three failures at once; a fix and a recheck leave two; approving the forbidden
   one is refused; the change is aborted (audited).
2. A hotfix during the freeze needs an approval: the requester's own is refused (four eyes), a
   second sre-lead's is accepted; the audit store shows both.
3. The freeze is lifted. A change before its own maintenance window waits on a durable timer,
   then proceeds.
4. A good version rolls out in waves, each baking while the worker watches the error rate.
5. A bad version: the error rate rises, the policy pages, nobody answers in time, and every host
   is rolled back to the version it ran before (checked against the fleet itself).
6. An emergency freeze reaches a running change: declared while its first wave bakes, the timing
   check before the second wave (judged by the new bundle) pauses the change and pages its team
   (the freeze's ``mid_rollout: pause``); the change is aborted and its first wave undone.

Each step checks what it promised; the run exits 0 when all did, else 1 naming the steps that did
not. The change files are ``demo/changes/*.yaml``; the demo points them and the bundle at the ports
it uses, moves the freeze (``demo/freeze.yaml``) to today and opens the window a few seconds ahead.
Ports: ``CHANGEGUARD_DEMO_PORT`` (7233), ``CHANGEGUARD_DEMO_UI_PORT`` (8233),
``CHANGEGUARD_DEMO_FLEET_PORT`` (8800).

The pieces: :mod:`demo.runner` (the stack up, the intro, each step, the summary),
:mod:`demo.steps` (the six steps: :mod:`~demo.steps.gate` 1-3, :mod:`~demo.steps.rollout` 4-6),
:mod:`demo.harness` (what the steps act through: change files, the bundle, the fleet, the ledger),
:mod:`demo.live` (the live view of one change) and :mod:`demo.narration` (what it tells, and the
gate report as the one report view of :mod:`workflows.report_view`).
"""

from __future__ import annotations

from demo.runner import run_demo

__all__ = ["run_demo"]
