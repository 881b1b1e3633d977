"""Wire models of the timing questions a rollout asks before each wave, and of ``not_before``.

A leaf module (pydantic, the standard library and :mod:`workflows.types` only), so the workflow,
the ``check_wave_timing`` activity, the CLI and tests share it. New fields always get defaults, so
histories recorded by older workers still decode. docs/change-windows.md describes the rules.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

MidRollout = Literal["finish", "pause", "rollback"]
"""What a rollout does when a timing rule closes between its waves (docs/change-windows.md)."""

MID_ROLLOUT_ORDER: dict[str, int] = {"finish": 0, "pause": 1, "rollback": 2}
"""Several closing rules: the strictest choice wins (rollback over pause over finish)."""

NOT_BEFORE_MAX = timedelta(days=90)
"""The furthest ahead a request's ``not_before`` may lie."""


class WaveTimingInput(BaseModel):
    """Input of ``check_wave_timing``: may a wave of this change start at ``at`` and finish?

    ``change`` and ``policy`` are resolved like the gate's (the bundle the worker holds now, plus
    the request's additions), so a calendar edit or a new bundle is seen before the next wave.
    """

    change: dict[str, Any] = Field(description="the ChangeContext, as JSON")
    policy: dict[str, Any] | None = None
    at: datetime
    bake: timedelta = timedelta(0)
    wave: int = 0
    waves: int = 1
    approved: list[str] = Field(
        default_factory=list,
        description="rule ids whose failure a valid approval covers: they do not hold the wave",
    )


class RuleTiming(BaseModel):
    """One ``change-window`` rule's answer for a wave (unconstrained: built by an activity)."""

    rule: str
    owner: str = ""
    timezone: str = "UTC"
    needed: timedelta = timedelta(0)
    open_now: bool = True
    closes_at: datetime | None = Field(
        default=None, description="when the opening that contains `at` closes (None: not soon)"
    )
    fits: bool = True
    next_fit: datetime | None = Field(
        default=None, description="the first start from which the rule stays open for `needed`"
    )
    mid_rollout: str = "pause"
    reason: str = ""
    error: str = Field(default="", description="why the rule could not be judged (fail-closed)")


class WaveTimingResult(BaseModel):
    """Output of ``check_wave_timing``: whether the wave fits, and if not, when it would."""

    at: datetime
    fits: bool = True
    earliest: datetime | None = Field(
        default=None,
        description="the earliest start at which every rule stays open for the wave and its bake",
    )
    earliest_label: str = Field(default="", description="`earliest` in the first rule's zone")
    rules: list[RuleTiming] = Field(default_factory=list)

    @property
    def closing(self) -> list[RuleTiming]:
        """The rules the wave does not fit."""
        return [r for r in self.rules if not r.fits]

    def choice(self) -> str:
        """The strictest ``mid_rollout`` choice among the closing rules (``pause`` by default)."""
        choices = [r.mid_rollout for r in self.closing] or ["pause"]
        return max(choices, key=lambda c: MID_ROLLOUT_ORDER.get(c, 1))

    def why(self) -> str:
        """One line naming each closing rule and why (bounded)."""
        text = "; ".join(f"{r.rule}: {r.error or r.reason}" for r in self.closing[:5])
        return text[:1000]


def not_before_problem(
    not_before: datetime | None, deadline: datetime | None, now: datetime
) -> str | None:
    """What is wrong with a request's ``not_before`` at ``now``, or None (edge and workflow)."""
    if not_before is None:
        return None
    if not_before.tzinfo is None:
        return "not_before needs a time zone, e.g. 2026-12-01T18:00:00Z"
    if not_before > now + NOT_BEFORE_MAX:
        return (
            f"not_before {not_before.isoformat()} is more than {NOT_BEFORE_MAX.days} days ahead; "
            "schedule a change at most that far in advance"
        )
    if deadline is not None and deadline <= not_before:
        return (
            f"not_before {not_before.isoformat()} is not before the deadline "
            f"{deadline.isoformat()}; give a deadline after it (or omit the deadline)"
        )
    return None
