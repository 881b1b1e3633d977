"""The change-kind contract: how changeguard mutates, reverts and describes a target.

A change kind is a class with ``name``, ``params_model``, ``reversible`` and three async methods.
Every mutation receives an idempotency key derived from (change id, step, target): applying the same
key twice must apply nothing the second time. ``revert_if_applied`` must be correct whether or not
the forward step took effect (the compensation is registered before the step runs).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from guardrails.plugins import PluginRegistry
from workflows.models import ApplyResult, Target, TargetState

P = TypeVar("P", bound=BaseModel)

CHANGE_KIND_GROUP = "changeguard.change_kinds"


class ChangeKind(ABC, Generic[P]):
    """Base class of every change kind."""

    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    reversible: ClassVar[bool] = True
    description: ClassVar[str] = ""

    def parse_params(self, raw: dict[str, Any]) -> P:
        """Validate the change's ``params`` (raises ``pydantic.ValidationError``)."""
        return self.params_model.model_validate(raw)  # type: ignore[return-value]

    @abstractmethod
    async def apply(self, params: P, target: Target, *, idempotency_key: str) -> ApplyResult:
        """Apply the change to one target; a replayed key must apply nothing."""

    @abstractmethod
    async def revert_if_applied(
        self, params: P, target: Target, *, applied_key: str, idempotency_key: str
    ) -> ApplyResult:
        """Undo what ``applied_key`` did to the target, if it did anything; idempotent."""

    @abstractmethod
    async def describe(self, params: P, target: Target) -> TargetState:
        """Report the target's current state (reachable, healthy, version)."""


def _validate_kind(cls: type[ChangeKind[Any]]) -> list[str]:
    if not (isinstance(cls, type) and issubclass(cls, ChangeKind)):
        return ["it must subclass activities.kinds.base.ChangeKind"]
    problems = []
    if inspect.isabstract(cls):
        problems.append("it must implement apply, revert_if_applied and describe")
    else:
        for m in ("apply", "revert_if_applied", "describe"):
            if not inspect.iscoroutinefunction(getattr(cls, m)):
                problems.append(f"{m} must be 'async def'")
    pm = getattr(cls, "params_model", None)
    if not (isinstance(pm, type) and issubclass(pm, BaseModel)):
        problems.append("params_model must be a pydantic model class")
    if not isinstance(getattr(cls, "reversible", None), bool):
        problems.append("reversible must be a bool")
    return problems


def new_registry() -> PluginRegistry[ChangeKind[Any]]:
    """An empty change-kind registry."""
    return PluginRegistry(kind="change kind", group=CHANGE_KIND_GROUP, validate=_validate_kind)


def default_registry() -> PluginRegistry[ChangeKind[Any]]:
    """A registry with every change kind advertised through entry points."""
    registry = new_registry()
    registry.load_entry_points()
    return registry
