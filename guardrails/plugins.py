"""The one plug-in base and registry shared by guardrails, change kinds, pagers and directories.

Modelled on pluggy: the contract lives apart from implementations, registration validates an
implementation against it and refuses duplicates, and third-party plug-ins arrive through Python
entry points loaded once at start-up (the worker loads each group once and hands the registries
out, see :class:`worker.registry.Plugins`). Built-ins are registered through the same entry points.

What every plug-in kind shares lives here once:

- :class:`Plugin`, the base class: ``name``, ``params_model``, ``description``,
  :meth:`~Plugin.parse_params` and the contract check (:meth:`~Plugin.contract_problems`: the
  declared async methods and the params model; each kind adds its own attributes);
- :class:`PluginKind`, one per kind of plug-in: its name in messages, its entry-point group and its
  contract, with :meth:`~PluginKind.new_registry` and :meth:`~PluginKind.default_registry`;
- :class:`PluginRegistry`, the validated registry itself, and the params error helpers.
"""

from __future__ import annotations

import inspect
import re
from abc import ABC
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from workflows.problems import problems

T = TypeVar("T")
P = TypeVar("P", bound=BaseModel)

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


class HasParams(Protocol):
    """A plug-in that validates its own params (guardrails, change kinds, pagers)."""

    def parse_params(self, raw: dict[str, Any]) -> Any:
        """Validate raw params; raises ``pydantic.ValidationError``."""


class EmptyParams(BaseModel):
    """Params model for plug-ins that take none."""

    model_config = ConfigDict(extra="forbid")


class Plugin(ABC, Generic[P]):
    """Base class of guardrails, change kinds and pagers: a name, a params model, a contract.

    A kind of plug-in subclasses this with its abstract async methods, lists them in
    ``async_methods`` (and what to say when one is missing in ``unimplemented``), and adds its own
    attribute checks by overriding :meth:`attribute_problems` (calling ``super()``).
    """

    name: ClassVar[str]
    params_model: ClassVar[type[BaseModel]]
    description: ClassVar[str] = ""
    async_methods: ClassVar[tuple[str, ...]] = ()
    """The methods the contract requires to be ``async def``."""
    unimplemented: ClassVar[str] = ""
    """The problem reported when a class leaves one of its abstract methods unimplemented."""

    def parse_params(self, raw: dict[str, Any]) -> P:
        """Validate raw params against ``params_model`` (raises ``pydantic.ValidationError``)."""
        return self.params_model.model_validate(raw)  # type: ignore[return-value]

    @classmethod
    def contract_problems(cls) -> list[str]:
        """Every way this class breaks its contract (empty when it conforms)."""
        return [*cls.method_problems(), *cls.attribute_problems()]

    @classmethod
    def method_problems(cls) -> list[str]:
        """An unimplemented abstract method, or a required method that is not ``async def``."""
        if inspect.isabstract(cls):
            return [cls.unimplemented]
        return [
            f"{m} must be 'async def'"
            for m in cls.async_methods
            if not inspect.iscoroutinefunction(getattr(cls, m, None))
        ]

    @classmethod
    def attribute_problems(cls) -> list[str]:
        """Problems with the class attributes (here: the params model)."""
        pm = getattr(cls, "params_model", None)
        if not (isinstance(pm, type) and issubclass(pm, BaseModel)):
            return ["params_model must be a pydantic model class"]
        return []


def subclass_contract(base: type[Plugin[Any]], path: str) -> Callable[[type[Any]], list[str]]:
    """The contract check of a plug-in kind whose plug-ins subclass ``base`` (spelled ``path``)."""

    def validate(cls: type[Any]) -> list[str]:
        if not (isinstance(cls, type) and issubclass(cls, base)):
            return [f"it must subclass {path}"]
        return cls.contract_problems()

    return validate


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One line per pydantic error, located by its dotted path (``params.url: ...``)."""
    return problems(exc, prefix=prefix)


def params_errors(plugin: HasParams, raw: dict[str, Any]) -> list[str]:
    """Human-readable problems with a plug-in's params, empty when they validate."""
    try:
        plugin.parse_params(raw)
    except ValidationError as exc:
        return validation_problems(exc, "params")
    return []


class RegistrationError(Exception):
    """A plug-in does not meet its contract, or its name is taken."""


class PluginRegistry(Generic[T]):
    """Plug-in classes by name, each validated against the contract on registration.

    Args:
        kind: what the registry holds, for error messages ("guardrail", "change kind").
        group: the entry-point group third-party plug-ins register under.
        validate: returns the list of contract problems of a class (empty when it conforms).
    """

    def __init__(self, *, kind: str, group: str, validate: Callable[[type[T]], list[str]]) -> None:
        self.kind = kind
        self.group = group
        self._validate = validate
        self._classes: dict[str, type[T]] = {}
        self._instances: dict[str, T] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Register a plug-in class; usable as a decorator.

        Raises:
            RegistrationError: the class breaks the contract or its name is already registered.
        """
        name = getattr(cls, "name", None)
        problems = self._validate(cls)
        if not isinstance(name, str) or not _NAME.match(name):
            problems.insert(
                0, f"name {name!r} must be lower-case words joined by '-' (e.g. 'change-window')"
            )
        if problems:
            raise RegistrationError(
                f"{self.kind} {cls.__module__}.{cls.__qualname__} does not meet the contract: "
                + "; ".join(problems)
            )
        assert isinstance(name, str)
        existing = self._classes.get(name)
        if existing is not None and existing is not cls:
            raise RegistrationError(
                f"{self.kind} name {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}; pick another name"
            )
        self._classes[name] = cls
        return cls

    def load_entry_points(self) -> list[str]:
        """Register every plug-in advertised under this registry's entry-point group.

        Returns:
            The names registered, in load order.
        """
        loaded = []
        for ep in sorted(entry_points(group=self.group), key=lambda e: e.name):
            cls = ep.load()
            self.register(cls)
            if cls.name != ep.name:
                raise RegistrationError(
                    f"entry point {ep.name!r} in group {self.group!r} loads {self.kind} "
                    f"named {cls.name!r}; the two names must match"
                )
            loaded.append(ep.name)
        return loaded

    def get(self, name: str) -> T:
        """The (shared) instance of a registered plug-in.

        Raises:
            KeyError: nothing is registered under that name; the message lists what is.
        """
        if name not in self._classes:
            known = ", ".join(sorted(self._classes)) or "none"
            raise KeyError(f"no {self.kind} named {name!r} is registered (known: {known})")
        if name not in self._instances:
            self._instances[name] = self._classes[name]()
        return self._instances[name]

    def cls(self, name: str) -> type[T]:
        """The registered class (see :meth:`get` for errors)."""
        self.get(name)
        return self._classes[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


@dataclass(frozen=True)
class PluginKind(Generic[T]):
    """One kind of plug-in: what messages call it, its entry-point group and its contract check.

    Args:
        kind: what its registries hold, for error messages ("guardrail", "change kind").
        group: the entry-point group its third-party plug-ins register under.
        validate: returns the contract problems of a class (empty when it conforms); see
            :func:`subclass_contract`.
    """

    kind: str
    group: str
    validate: Callable[[type[T]], list[str]]

    def new_registry(self) -> PluginRegistry[T]:
        """An empty registry of this kind (tests use their own; the worker loads entry points)."""
        return PluginRegistry(kind=self.kind, group=self.group, validate=self.validate)

    def default_registry(self) -> PluginRegistry[T]:
        """A registry with every plug-in of this kind advertised through entry points."""
        registry = self.new_registry()
        registry.load_entry_points()
        return registry
