"""Wire models: the change request (validated at the edge)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    Field,
    field_validator,
)

from workflows.identity_models import Signature
from workflows.ids import LOCK_PREFIX as LOCK_PREFIX
from workflows.ids import lock_id as lock_id
from workflows.types import NAME_MAX, TEXT_MAX, Name, Text
from workflows.types import Duration as Duration
from workflows.types import Strict as Strict
from workflows.types import format_duration as format_duration
from workflows.types import parse_duration as parse_duration
from workflows.waves import WAVE_SPEC

# The change request (validated at the edge)
# --------------------------------------------------------------------------------------------------

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
ID_RULE = (
    "1-128 characters of letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
)

ShortName = Annotated[Name, Field(min_length=1, max_length=NAME_MAX)]
"""A bounded name (person, team, environment, kind, rule id)."""
Reason = Annotated[Text, Field(min_length=1, max_length=TEXT_MAX)]
"""A bounded, non-empty free-text reason."""
LabelKey = Annotated[Name, Field(min_length=1, max_length=63)]
LabelValue = Annotated[Name, Field(max_length=256)]

TARGET_IDS_MAX_CHARS = 400_000
"""The status and the result list applied and reverted target ids: they must stay under 2 MB."""
REQUEST_MAX_BYTES = 1_000_000
"""A change request larger than this (as JSON) is refused: Temporal refuses payloads over 2 MB,
and the request's parts travel again in the gate's and batches' inputs."""


def valid_id(value: str) -> bool:
    """Whether a change or target id has the accepted shape (see :data:`ID_RULE`)."""
    return bool(_ID.match(value))


class Target(Strict):
    """One thing a change mutates (a host, a service, a database)."""

    id: str
    environment: ShortName | None = Field(
        default=None, description="defaults to the change's environment"
    )
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError(f"target id must be {ID_RULE}")
        return v


class Rollout(Strict):
    """How a change is applied: cumulative waves, parallelism within a wave, bake after each."""

    waves: list[str] = Field(
        default_factory=lambda: ["1", "25%", "100%"],
        description="cumulative sizes: a target count ('1') or a share of all targets ('25%')",
        max_length=20,
    )
    max_parallel: int = Field(default=5, ge=1, le=100)
    bake: Duration = timedelta(seconds=0)

    @field_validator("bake")
    @classmethod
    def _bake_bound(cls, v: timedelta) -> timedelta:
        if v > timedelta(days=7):
            raise ValueError("bake must be at most 7d")
        return v

    @field_validator("waves", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return [str(w) for w in v] if isinstance(v, list) else v

    @field_validator("waves")
    @classmethod
    def _wave_shape(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one wave is needed, e.g. ['1', '25%', '100%']")
        for w in v:
            m = WAVE_SPEC.match(w.strip()) if len(w) <= 12 else None
            if not m or int(m.group(1)) == 0 or (m.group(2) and int(m.group(1)) > 100):
                raise ValueError(
                    f"wave {w!r} must be a positive target count ('3') or a share 1-100% ('25%')"
                )
        if v[-1].strip() != "100%":
            raise ValueError("the last wave must be '100%' so that every target is covered")
        return [w.strip() for w in v]


class ChangeRequest(Strict):
    """A request to change some targets; the input of the ``GuardedChange`` workflow.

    ``change_id`` is the workflow id. It may be omitted (the workflow takes its own id); when given
    it must equal the workflow id. Nothing here draws a random or time-based default: such a
    default would be drawn again at every decode of the input, and differ on replay. Ids are
    generated at the edge (the CLI, the client library) only.
    """

    change_id: str | None = Field(
        default=None, description="the workflow id; omitted, the workflow's own id is used"
    )
    kind: ShortName
    summary: Text = Field(min_length=1, max_length=500)
    requester: ShortName
    team: ShortName
    environment: ShortName
    targets: list[Target] = Field(min_length=1, max_length=10_000)
    params: dict[str, Any] = Field(default_factory=dict)
    rollout: Rollout = Field(default_factory=Rollout)
    policy: dict[str, Any] | None = Field(
        default=None,
        description=(
            "rules and signals this change adds to the platform's policy bundle, inline (the CLI "
            "inlines a file); workers never read a path from a request"
        ),
    )
    signature: Signature | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="the requester's signature of this request (changeguard start --sign)",
    )
    deadline: datetime | None = Field(
        default=None, description="when the gate must have passed; default 24h after start"
    )
    not_before: datetime | None = Field(
        default=None,
        description=(
            "schedule the change: it waits until then before its gate (at most 90 days ahead; "
            "the default deadline counts from it)"
        ),
    )

    @field_validator("change_id")
    @classmethod
    def _change_id_shape(cls, v: str | None) -> str | None:
        if v is not None and not _ID.match(v):
            raise ValueError(f"change_id must be {ID_RULE}")
        return v

    @field_validator("policy", mode="before")
    @classmethod
    def _policy_inline(cls, v: Any) -> Any:
        if isinstance(v, str):
            raise ValueError(
                "policy must be the rules inline (a mapping); workers never read a path from a "
                "request (the changeguard CLI inlines a file for you)"
            )
        return v

    @field_validator("deadline")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("deadline needs a time zone, e.g. 2026-12-01T18:00:00Z")
        return v

    @field_validator("not_before")
    @classmethod
    def _not_before_aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("not_before needs a time zone, e.g. 2026-12-01T18:00:00Z")
        return v

    @field_validator("targets")
    @classmethod
    def _targets_unique(cls, targets: list[Target]) -> list[Target]:
        seen: set[str] = set()
        dupes = sorted({t.id for t in targets if t.id in seen or seen.add(t.id)})  # type: ignore[func-returns-value]
        if dupes:
            shown = ", ".join(dupes[:20]) + (
                f" and {len(dupes) - 20} more" if len(dupes) > 20 else ""
            )
            raise ValueError(f"targets listed twice: {shown}")
        total = sum(len(t.id) for t in targets)
        if total > TARGET_IDS_MAX_CHARS:
            raise ValueError(
                f"the target ids take {total:,} characters together; at most "
                f"{TARGET_IDS_MAX_CHARS:,} are accepted (the status and result list them)"
            )
        return targets

    def target_environment(self, target: Target) -> str:
        """The environment a target lives in (its own, else the change's)."""
        return target.environment or self.environment

    def digest(self) -> str:
        """A stable digest of the request, for the ledger (what exactly was asked)."""
        dumped = self.model_dump(mode="json")
        if dumped.get("not_before") is None:
            dumped.pop("not_before", None)  # digests of requests without it stay as they were
        canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class ChangeContext(BaseModel):
    """What a guardrail or change kind may know about the change it is judging."""

    change_id: str
    kind: str
    summary: str = ""
    requester: str = ""
    team: str = ""
    environment: str
    targets: list[Target] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    deadline: datetime | None = None

    @classmethod
    def of(cls, request: ChangeRequest, change_id: str | None = None) -> ChangeContext:
        """Build the context from a validated request (``change_id``: the workflow id)."""
        cid = change_id or request.change_id
        assert cid is not None, "a change's context needs its id (the workflow id)"
        return cls(
            change_id=cid,
            kind=request.kind,
            summary=request.summary,
            requester=request.requester,
            team=request.team,
            environment=request.environment,
            targets=request.targets,
            params=request.params,
            deadline=request.deadline,
        )
