"""The change-kind contract: how changeguard mutates, reverts and describes a target.

A change kind is a class with ``name``, ``params_model``, ``reversible`` and three async methods.
Every mutation receives an idempotency key derived from (change id, step, target): applying the same
key twice must apply nothing the second time. ``revert_if_applied`` must be correct whether or not
the forward step took effect (the compensation is registered before the step runs).

Long-running kinds (docs/long-running-changes.md) also declare:

- ``options(params)``: the activity options of their mutations (``start_to_close``,
  ``heartbeat_interval``, ``stall_after``), from the class attributes of the same names by default;
  the workflow learns them from ``validate_change`` at the start of the change;
- ``checkpoint_model``: the pydantic model of their progress checkpoints. ``apply`` and
  ``revert_if_applied`` may take a keyword ``progress`` (a :class:`~activities.kinds.progress.Progress`):
  ``progress.checkpoint(details)`` heartbeats typed details, and a retried attempt finds the last
  one in ``progress.resumed_from`` (a hint: re-read the real state before continuing);
- ``steps(params)``: the steps a change makes on each target and, per step, whether it can be
  undone. The ``irreversible-steps`` guardrail fails any change with an irreversible step.

A kind may hand a target's work to an external system and finish later: see
:mod:`activities.kinds.handoff`.

A kind may apply several targets in one activity (``apply_many_size`` > 0, and optionally its own
``apply_many``, which shares a connection, say): large waves then send it chunks of targets
(``apply_change_many``), each target still with its own idempotency key, result and ledger
record (docs/writing-a-change-kind.md).
"""

from __future__ import annotations

import inspect
from abc import abstractmethod
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from activities.kinds.progress import Progress, current_progress
from guardrails.plugins import Plugin, PluginKind, PluginRegistry, subclass_contract
from workflows.models import ApplyResult, Target, TargetState
from workflows.progress_models import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_START_TO_CLOSE,
    MutationOptions,
    StepDeclaration,
)

__all__ = [
    "CHANGE_KINDS",
    "CHANGE_KIND_GROUP",
    "ChangeKind",
    "MutationOptions",
    "Progress",
    "StepDeclaration",
    "accepts_progress",
    "current_progress",
    "default_registry",
    "new_registry",
]

P = TypeVar("P", bound=BaseModel)

CHANGE_KIND_GROUP = "changeguard.change_kinds"


class ChangeKind(Plugin[P]):
    """Base class of every change kind."""

    reversible: ClassVar[bool] = True
    start_to_close: ClassVar[timedelta] = DEFAULT_START_TO_CLOSE
    heartbeat_interval: ClassVar[timedelta] = DEFAULT_HEARTBEAT_INTERVAL
    stall_after: ClassVar[timedelta | None] = None
    checkpoint_model: ClassVar[type[BaseModel] | None] = None
    apply_many_size: ClassVar[int] = 0
    """At most this many targets in one ``apply_change_many`` activity; 0: one per activity."""
    async_methods: ClassVar[tuple[str, ...]] = ("apply", "revert_if_applied", "describe")
    unimplemented: ClassVar[str] = "it must implement apply, revert_if_applied and describe"

    def options(self, params: P) -> MutationOptions:
        """The activity options of this change's mutations (override to derive them from params)."""
        return MutationOptions(
            start_to_close=self.start_to_close,
            heartbeat_interval=self.heartbeat_interval,
            stall_after=self.stall_after,
        )

    def handoff_result(self, target_id: str, details: dict[str, Any]) -> ApplyResult:
        """The result of a handed-off job from its final callback's ``details``.

        Default: the details are an ``ApplyResult`` (``target_id`` filled in). Kinds whose external
        system reports in its own terms override this.
        """
        return ApplyResult.model_validate({"applied": True, **details, "target_id": target_id})

    def steps(self, params: P) -> list[StepDeclaration]:
        """The steps this change makes on each target, and whether each can be undone.

        Default: one step, ``apply``, as reversible as the kind (``reversible``).
        """
        return [StepDeclaration(name="apply", reversible=self.reversible)]

    @abstractmethod
    async def apply(self, params: P, target: Target, *, idempotency_key: str) -> ApplyResult:
        """Apply the change to one target; a replayed key must apply nothing."""

    async def apply_many(
        self, params: P, items: list[tuple[Target, str]]
    ) -> AsyncGenerator[ApplyResult, None]:
        """Apply each ``(target, idempotency_key)`` in order, yielding its result once done.

        Used only when ``apply_many_size`` > 0. A raised error is that target's failure; the
        targets after it are not attempted. Default: :meth:`apply`, one target after the other;
        override to share work between targets (one HTTP client, one session).
        """
        for target, key in items:
            yield await self.apply(params, target, idempotency_key=key)

    @abstractmethod
    async def revert_if_applied(
        self, params: P, target: Target, *, applied_key: str, idempotency_key: str
    ) -> ApplyResult:
        """Undo what ``applied_key`` did to the target, if it did anything; idempotent."""

    @abstractmethod
    async def describe(self, params: P, target: Target) -> TargetState:
        """Report the target's current state (reachable, healthy, version)."""

    @classmethod
    def attribute_problems(cls) -> list[str]:
        """The params model, reversibility, timeouts, batch size and checkpoint model."""
        problems = super().attribute_problems()
        if not isinstance(getattr(cls, "reversible", None), bool):
            problems.append("reversible must be a bool")
        for attr in ("start_to_close", "heartbeat_interval"):
            value = getattr(cls, attr, None)
            if not isinstance(value, timedelta) or value <= timedelta(0):
                problems.append(f"{attr} must be a positive timedelta")
        size = getattr(cls, "apply_many_size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append("apply_many_size must be an int >= 0 (0: one target per activity)")
        cm = getattr(cls, "checkpoint_model", None)
        if cm is not None and not (isinstance(cm, type) and issubclass(cm, BaseModel)):
            problems.append("checkpoint_model must be a pydantic model class or None")
        return problems


CHANGE_KINDS: PluginKind[ChangeKind[Any]] = PluginKind(
    kind="change kind",
    group=CHANGE_KIND_GROUP,
    validate=subclass_contract(ChangeKind, "activities.kinds.base.ChangeKind"),
)
"""The change-kind plug-in kind: its entry-point group and contract."""


def accepts_progress(method: Any) -> bool:
    """Whether a kind's ``apply`` / ``revert_if_applied`` takes the ``progress`` keyword."""
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return "progress" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def new_registry() -> PluginRegistry[ChangeKind[Any]]:
    """An empty change-kind registry."""
    return CHANGE_KINDS.new_registry()


def default_registry() -> PluginRegistry[ChangeKind[Any]]:
    """A registry with every change kind advertised through entry points."""
    return CHANGE_KINDS.default_registry()
