"""Calibrated response: from signal readings and the policy's rules to one action (pure).

Each reading is matched to a rule by (signal, state), then ("*", state); with no rule the
defaults below apply. Across readings the most severe action wins:
``rollback`` > ``pause_and_page`` > ``wait`` > ``proceed``.

Defaults (documented in docs/operators.md, overridable per signal and state in the policy):

===================== ================ ========================= ==========
state                 action           bound                     then
===================== ================ ========================= ==========
ok, recovering        proceed
insufficient_data     wait             max 5m                    pause_and_page
degraded              pause_and_page   timeout 30m               rollback
critical              rollback
===================== ================ ========================= ==========
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from workflows.rollout_models import ResponseRule, SignalReading

SEVERITY = {"proceed": 0, "wait": 1, "pause_and_page": 2, "rollback": 3}

DEFAULTS: dict[str, ResponseRule] = {
    "ok": ResponseRule(signal="*", state="ok", do="proceed"),
    "recovering": ResponseRule(signal="*", state="recovering", do="proceed"),
    "insufficient_data": ResponseRule(
        signal="*",
        state="insufficient_data",
        do="wait",
        max=timedelta(minutes=5),
        then="pause_and_page",
    ),
    "degraded": ResponseRule(
        signal="*",
        state="degraded",
        do="pause_and_page",
        timeout=timedelta(minutes=30),
        then="rollback",
    ),
    "critical": ResponseRule(signal="*", state="critical", do="rollback"),
}


@dataclass(frozen=True)
class Response:
    """The action to take now, the rule that chose it, and the reading behind it."""

    rule: ResponseRule
    reading: SignalReading | None

    @property
    def action(self) -> str:
        """``proceed``, ``wait``, ``pause_and_page`` or ``rollback``."""
        return self.rule.do

    def why(self) -> str:
        """One sentence an operator can act on."""
        if self.reading is None:
            return "no signal is configured"
        r = self.reading
        value = "" if r.value is None else f" ({r.value:g})"
        detail = f": {r.detail}" if r.detail else ""
        return f"signal {r.signal} is {r.state}{value}{detail}"


def rule_for(reading: SignalReading, rules: list[ResponseRule]) -> ResponseRule:
    """The policy's rule for this reading, else the default for its state."""
    state = str(reading.state)
    for wanted in (reading.signal, "*"):
        for rule in rules:
            if rule.signal == wanted and rule.state == state:
                return rule
    return DEFAULTS[state]


def decide(readings: list[SignalReading], rules: list[ResponseRule]) -> Response:
    """The most severe response any reading calls for (``proceed`` when there are none)."""
    best = Response(DEFAULTS["ok"], None)
    for reading in readings:
        candidate = Response(rule_for(reading, rules), reading)
        if SEVERITY[candidate.action] > SEVERITY[best.action]:
            best = candidate
    return best
