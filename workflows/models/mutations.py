"""Wire models: change kinds: mutation, compensation, description."""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    Field,
)

from workflows.ids import LOCK_PREFIX as LOCK_PREFIX
from workflows.ids import lock_id as lock_id
from workflows.models.request import Target
from workflows.types import Duration as Duration
from workflows.types import Strict as Strict
from workflows.types import format_duration as format_duration
from workflows.types import parse_duration as parse_duration

# Change kinds: mutation, compensation, description
# --------------------------------------------------------------------------------------------------


class ApplyInput(BaseModel):
    """Input of ``apply_change`` and ``revert_change`` for one target."""

    change_id: str
    kind: str
    step: str
    target: Target
    params: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str
    applied_key: str | None = Field(
        default=None, description="for a compensation: the key of the step it undoes"
    )


class ApplyResult(BaseModel):
    """What a mutation (or its compensation) did to one target."""

    target_id: str
    applied: bool
    detail: str = ""
    before: dict[str, Any] = Field(default_factory=dict)
    after: dict[str, Any] = Field(default_factory=dict)
    replayed: bool = Field(
        default=False,
        description="an earlier attempt with this idempotency key already had the effect",
    )
    steps: list[dict[str, Any]] = Field(
        default_factory=list,
        description="per step, what it did (workflows.progress_models.StepRecord as JSON)",
    )
    irreversible: list[str] = Field(
        default_factory=list,
        description="irreversible steps in effect on the target: past its point of no return",
    )

    @property
    def took_effect(self) -> bool:
        """The effect of this key is in place: made now (``applied``) or by an earlier attempt."""
        return self.applied or self.replayed


class DescribeInput(BaseModel):
    """Input of ``describe_target``."""

    kind: str
    target: Target
    params: dict[str, Any] = Field(default_factory=dict)


class TargetState(BaseModel):
    """A change kind's view of one target."""

    target_id: str
    reachable: bool
    healthy: bool
    version: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict)
