"""The demo's six steps, in the order they run (the change id, title, expected outcome, summary)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from demo.harness import Demo, StepResult
from demo.steps.gate import step_approval, step_freeze, step_window
from demo.steps.rollout import step_bad, step_frozen, step_good
from workflows.models import Outcome

STEPS: list[tuple[str, str, Outcome, str, Callable[[Demo, StepResult], Awaitable[None]]]] = [
    (
        "demo1-freeze",
        "The platform declares a freeze; a change is blocked, every reason explained",
        Outcome.ABORTED,
        "3 failures in one report; fix + recheck; forbidden approval refused; abort",
        step_freeze,
    ),
    (
        "demo2-hotfix",
        "A hotfix during the freeze needs a second pair of eyes",
        Outcome.COMPLETED,
        "own approval refused (four eyes); bob approves; audited",
        step_approval,
    ),
    (
        "demo3-window",
        "The freeze is lifted; a change waits for its window, then proceeds",
        Outcome.COMPLETED,
        "Waiting on a durable timer, then gate passes at the opening",
        step_window,
    ),
    (
        "demo4-good",
        "A good version rolls out in waves with bakes",
        Outcome.COMPLETED,
        "3 waves, each baked on the fleet's error rate",
        step_good,
    ),
    (
        "demo5-bad",
        "A bad version is paged and rolled back",
        Outcome.ROLLED_BACK,
        "error rate rose; paged; rolled back; fleet restored",
        step_bad,
    ),
    (
        "demo6-frozen",
        "An emergency freeze stops a running change before its next wave",
        Outcome.ABORTED,
        "bundle edited mid-bake; wave 2 paused and paged; aborted; wave 1 undone",
        step_frozen,
    ),
]
