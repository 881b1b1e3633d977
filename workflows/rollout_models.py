"""Wire models of the rollout's bake and paging: signals observed, their states, pages sent.

A leaf module (pydantic, the standard library and :mod:`workflows.models` only), so the workflow,
the ``observe_signals`` and ``page`` activities, pagers and tests share it. New fields always get
defaults, so histories recorded by older workers still decode.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from workflows.types import Duration, Strict

SignalStateName = Literal["ok", "degraded", "critical", "recovering", "insufficient_data"]
Action = Literal["proceed", "wait", "pause_and_page", "rollback"]

__all__ = [
    "FLEET_ERROR_RATE",
    "Action",
    "BreakerState",
    "BreakerStatus",
    "ObserveInput",
    "ObserveResult",
    "PageInput",
    "PageResult",
    "ResponseRule",
    "RolloutPolicy",
    "Severity",
    "SignalReading",
    "SignalSpec",
    "SignalState",
    "SignalStateName",
]


class SignalState(StrEnum):
    """How a health signal looks after a wave; the policy's ``responses`` map it to an action.

    ``recovering`` is a signal that was ``degraded`` or ``critical`` at the previous observation
    and is now below both thresholds; one more good observation makes it ``ok``.
    """

    OK = "ok"
    DEGRADED = "degraded"
    CRITICAL = "critical"
    RECOVERING = "recovering"
    INSUFFICIENT_DATA = "insufficient_data"


class SignalSpec(Strict):
    """One health signal to observe during a bake, and where its thresholds lie.

    A ``fleet`` signal reads the change kind's target API (``params.base_url``): the ``metric``
    series of its ``/metrics``, one per target by the ``target_label`` label. A ``prometheus``
    signal evaluates ``query`` at ``url``; ``{targets}`` in the query becomes the observed target
    ids as a regular-expression alternation (``fleet_error_ratio{host=~"{targets}"}``) and
    ``{environment}`` the change's environment. The signal's value is the worst (highest) sample.
    """

    name: str = Field(min_length=1, description="the name responses refer to, e.g. error-rate")
    source: Literal["fleet", "prometheus"] = "fleet"
    metric: str = Field(
        default="fleet_error_ratio", min_length=1, description="fleet: the metric read per target"
    )
    url: str | None = Field(default=None, description="prometheus: the base URL")
    query: str | None = Field(default=None, description="prometheus: PromQL, may use {targets}")
    target_label: str = Field(
        default="host", min_length=1, description="the label naming the target of a sample"
    )
    degraded_above: float = Field(allow_inf_nan=False, description="degraded at or above this")
    critical_above: float = Field(allow_inf_nan=False, description="critical at or above this")
    min_samples: int = Field(
        default=1, ge=1, description="fewer targets reporting than this is insufficient_data"
    )
    timeout: Duration = Field(default=timedelta(seconds=10), description="per HTTP request")

    @model_validator(mode="after")
    def _coherent(self) -> SignalSpec:
        problems = []
        if self.critical_above < self.degraded_above:
            problems.append(
                f"critical_above ({self.critical_above:g}) must not be below "
                f"degraded_above ({self.degraded_above:g})"
            )
        if self.source == "prometheus":
            if not self.url:
                problems.append("a prometheus signal needs 'url', e.g. http://prometheus:9090")
            if not (self.query or "").strip():
                problems.append("a prometheus signal needs 'query' (PromQL)")
        elif self.url is not None or self.query is not None:
            problems.append("'url' and 'query' only apply to source 'prometheus'")
        if self.timeout <= timedelta(0):
            problems.append("timeout must be positive, e.g. '10s'")
        if problems:
            raise ValueError("; ".join(problems))
        return self


FLEET_ERROR_RATE = SignalSpec(
    name="error-rate", source="fleet", degraded_above=0.01, critical_above=0.1
)
"""The default bake signal: each target's ``fleet_error_ratio`` (degraded at 1 %, critical at 10 %)."""


class ObserveInput(BaseModel):
    """Input of ``observe_signals``: which signals to read for which targets of a change."""

    change_id: str
    kind: str
    params: dict[str, Any] = Field(
        default_factory=dict, description="the change's params (fleet signals use base_url)"
    )
    targets: list[str] = Field(
        default_factory=list, description="target ids to observe; empty means every series"
    )
    environment: str = Field(default="", description="for the {environment} query placeholder")
    signals: list[SignalSpec] = Field(default_factory=list)
    previous: dict[str, SignalState] = Field(
        default_factory=dict, description="each signal's state at the previous observation"
    )


class SignalReading(BaseModel):
    """One signal's state, its worst value, and each target's value."""

    signal: str
    state: SignalState
    value: float | None = Field(default=None, description="the worst sample; None without data")
    detail: str = ""
    per_target: dict[str, float] = Field(default_factory=dict)


class ObserveResult(BaseModel):
    """Output of ``observe_signals``: one reading per requested signal, in request order."""

    readings: list[SignalReading] = Field(default_factory=list)

    def states(self) -> dict[str, SignalState]:
        """Each signal's state, ready to pass as the next observation's ``previous``."""
        return {r.signal: r.state for r in self.readings}


Severity = Literal["info", "warning", "critical"]


class PageInput(BaseModel):
    """Input of ``page``: tell a change's owner that it needs a person."""

    pager: str = Field(min_length=1, description="the registered pager, e.g. webhook or log")
    change_id: str
    owner: str = Field(description="the team or person paged")
    severity: Severity = "critical"
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)
    dedup_key: str = Field(
        min_length=1, description="the same incident pages once: receivers collapse repeats"
    )


class PageResult(BaseModel):
    """Output of ``page``: whether the pager delivered the page, and how."""

    pager: str
    delivered: bool
    detail: str = ""


class BreakerState(StrEnum):
    """The state of a worker's circuit breaker for one target API."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerStatus(BaseModel):
    """One circuit breaker as status displays show it."""

    key: str
    state: BreakerState
    failures: int = Field(default=0, description="consecutive failures counted")
    retry_in: float = Field(default=0.0, description="seconds until a probe is let through")


class ResponseRule(Strict):
    """How the bake phase answers one health signal in one state.

    ``signal`` is a signal name or ``"*"`` for any. ``wait`` extends the bake by at most ``max``;
    ``pause_and_page`` waits for an operator for at most ``timeout``; after either, ``then`` is
    the action taken (the bake code decides the default when it is omitted).
    """

    signal: str = Field(min_length=1)
    state: SignalStateName
    do: Action
    timeout: Duration | None = None
    max: Duration | None = None
    then: Action | None = None

    @model_validator(mode="after")
    def _coherent(self) -> ResponseRule:
        problems = []
        if self.do == "wait" and self.max is None:
            problems.append("'wait' needs 'max', how long to wait at most (e.g. max: 10m)")
        if self.do == "pause_and_page" and self.timeout is None:
            problems.append(
                "'pause_and_page' needs 'timeout', how long to wait for an operator (e.g. 30m)"
            )
        if self.max is not None and self.do != "wait":
            problems.append(f"'max' only applies to 'wait', not to {self.do!r}")
        if self.timeout is not None and self.do != "pause_and_page":
            problems.append(f"'timeout' only applies to 'pause_and_page', not to {self.do!r}")
        if self.then is not None and self.do not in ("wait", "pause_and_page"):
            problems.append(
                f"'then' only applies to 'wait' and 'pause_and_page', not to {self.do!r}"
            )
        for d in (self.max, self.timeout):
            if d is not None and d.total_seconds() <= 0:
                problems.append("durations must be positive")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class RolloutPolicy(BaseModel):
    """What the bake needs from the policy: the signals to observe and the responses to them."""

    signals: list[SignalSpec] = Field(default_factory=list)
    responses: list[ResponseRule] = Field(default_factory=list)
    pager: str = "log"
    page_on_reject: bool = False
    policy_hash: str = ""
