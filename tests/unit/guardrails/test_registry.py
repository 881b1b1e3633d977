"""The guardrail registry: entry-point loading and contract checks on registration."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from guardrails.base import CheckContext, EmptyParams, Guardrail, default_registry, new_registry
from guardrails.builtin.change_window import ChangeWindow
from guardrails.builtin.http_health import HttpHealth
from guardrails.plugins import RegistrationError
from workflows.models import Category, CheckResult


class AlwaysPass(Guardrail[EmptyParams]):
    name = "always-pass"
    category = Category.TIMING
    default_owner = "platform"

    async def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:
        return ctx.passed("nothing to check")


def test_builtins_load_through_entry_points() -> None:
    """default_registry() finds the built-ins through the changeguard.guardrails entry points."""
    registry = default_registry()
    assert {"change-window", "http-health"} <= set(registry.names())
    assert registry.cls("change-window") is ChangeWindow
    assert registry.cls("http-health") is HttpHealth


def test_registering_the_same_class_twice_is_harmless() -> None:
    """Re-registering the very same class is a no-op, not a conflict."""
    registry = new_registry()
    registry.register(AlwaysPass)
    registry.register(AlwaysPass)
    assert registry.names() == ["always-pass"]


def test_duplicate_name_is_refused() -> None:
    """A second class under a taken name is refused, naming the class that holds it."""

    class Impostor(AlwaysPass):
        pass

    registry = new_registry()
    registry.register(AlwaysPass)
    with pytest.raises(
        RegistrationError, match=r"'always-pass' is already registered by .*AlwaysPass"
    ):
        registry.register(Impostor)


def test_broken_class_lists_every_problem() -> None:
    """A class without owner or category and with a sync check is refused with each problem."""

    class Broken(Guardrail[EmptyParams]):
        name = "broken"
        default_timeout = timedelta(0)

        def check(self, params: EmptyParams, ctx: CheckContext) -> CheckResult:  # type: ignore[override]
            return ctx.passed()

    with pytest.raises(RegistrationError) as caught:
        new_registry().register(Broken)
    message = str(caught.value)
    for problem in (
        "check must be 'async def'",
        "category must be one of",
        "default_owner must name the team that owns the fix",
        "default_timeout must be a positive timedelta",
    ):
        assert problem in message


def test_unimplemented_check_is_refused() -> None:
    """A class that does not implement check at all is refused."""

    class NoCheck(Guardrail[EmptyParams]):
        name = "no-check"
        category = Category.TIMING
        default_owner = "platform"

    with pytest.raises(RegistrationError, match=r"it must implement async check\(params, ctx\)"):
        new_registry().register(NoCheck)  # type: ignore[type-abstract]


def test_non_guardrail_is_refused() -> None:
    """A class that does not subclass Guardrail is refused."""

    class NotAGuardrail:
        name = "not-a-guardrail"

    with pytest.raises(RegistrationError, match=r"it must subclass guardrails\.base\.Guardrail"):
        new_registry().register(NotAGuardrail)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad_name", ["Change_Window", "change--window", "-x", "", None, 7])
def test_bad_names_are_refused(bad_name: Any) -> None:
    """Names must be lower-case words joined by '-'."""
    cls = type("Named", (AlwaysPass,), {"name": bad_name})
    with pytest.raises(RegistrationError, match="must be lower-case words joined by '-'"):
        new_registry().register(cls)


def test_unknown_name_lists_known_names() -> None:
    """Asking for an unregistered guardrail says which ones exist."""
    registry = new_registry()
    registry.register(AlwaysPass)
    with pytest.raises(
        KeyError, match=r"no guardrail named 'nope' is registered \(known: always-pass\)"
    ):
        registry.get("nope")
