"""A small plug-in registry shared by guardrails, change kinds and pagers.

Modelled on pluggy: the contract lives apart from implementations, registration validates an
implementation against it and refuses duplicates, and third-party plug-ins arrive through Python
entry points loaded once at start-up. Built-ins are registered through the same entry points.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, Protocol, TypeVar

from pydantic import ValidationError

T = TypeVar("T")

_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


class HasParams(Protocol):
    """A plug-in that validates its own params (guardrails, change kinds, pagers)."""

    def parse_params(self, raw: dict[str, Any]) -> Any:
        """Validate raw params; raises ``pydantic.ValidationError``."""


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One line per pydantic error, located by its dotted path (``params.url: ...``)."""
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        where = ".".join(x for x in (prefix, loc) if x)
        out.append(f"{where}: {e['msg']}" if where else e["msg"])
    return out


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
