"""One plain line per pydantic error: the one formatter every edge of changeguard uses.

Payloads (:mod:`workflows.inputs`), policy files (:mod:`guardrails.policy_rules`), plug-in params
(:mod:`guardrails.plugins`) and the operator directory (:mod:`activities.directory`) all say a
problem as ``where: what``. They differ only in how they spell *where* (``targets.0.id``,
``guardrails[2].params``, ``operators.bob[1]``), so the location is a parameter and the rest —
our own validators' messages without pydantic's "Value error, " prefix, "unknown field", string
lengths said as text, bounded lengths, a cap on how many — is said the same everywhere.

A leaf module (pydantic and :mod:`workflows.types` only), safe in workflow code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from workflows.types import excerpt

Location = Callable[[tuple[int | str, ...]], str]
"""Spells a pydantic error's ``loc`` the way the document's author wrote it."""

WHERE_MAX = 120
"""A location is cut to this many characters (a hostile key can be a megabyte)."""
WHAT_MAX = 300
"""A message is cut to this many characters."""


def dotted(loc: Sequence[int | str]) -> str:
    """``targets.0.id``: pydantic's location, joined with dots."""
    return ".".join(str(p) for p in loc)


def message_of(err: Any) -> str:
    """What is wrong, in plain words: our validators' own text, "unknown field", or pydantic's."""
    ctx = err.get("ctx") or {}
    if err["type"] == "value_error" and "error" in ctx:
        return str(ctx["error"])  # our own message, without pydantic's "Value error, " prefix
    if err["type"] == "extra_forbidden":
        return "unknown field"
    return _text_length(err) or str(err["msg"])


def _text_length(err: Any) -> str:
    """A length bound on a string said as text: pydantic says "1 item" when a validator ran first."""
    if err["type"] not in ("too_short", "too_long") or not isinstance(err.get("input"), str):
        return ""
    ctx = err.get("ctx") or {}
    if err["type"] == "too_short":
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"must be at least {least} characters"
    return f"must be at most {ctx.get('max_length')} characters (got {len(err['input'])})"


def problems(
    exc: ValidationError,
    *,
    where: Location = dotted,
    prefix: str = "",
    limit: int | None = None,
) -> list[str]:
    """One ``where: what`` line per error of ``exc`` (just ``what`` when it has no location).

    Args:
        exc: the pydantic error.
        where: how locations are spelled (default :func:`dotted`).
        prefix: put before every location (``params`` → ``params.url``).
        limit: at most this many lines, then one saying how many more (default: all).
    """
    errors = exc.errors(include_url=False)
    shown = errors if limit is None else errors[:limit]
    out = []
    for err in shown:
        at = ".".join(x for x in (prefix, where(tuple(err["loc"]))) if x)
        what = excerpt(message_of(err), WHAT_MAX)
        out.append(f"{excerpt(at, WHERE_MAX)}: {what}" if at else what)
    if limit is not None and len(errors) > limit:
        out.append(f"… and {len(errors) - limit} more problem(s)")
    return out
