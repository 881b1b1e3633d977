"""Decode a handler's payload without ever failing the workflow task (docs/design.md, I10).

Every workflow entry point (``run``, each signal, update and query) accepts ``*args`` and hands
them here. A payload that is missing, ``null``, of the wrong type or shape, not JSON at all
(:class:`temporalio.common.RawValue`, see ``worker/converter.py``), two payloads instead of one, or
absurd values comes back as a :class:`Refusal` whose ``why`` says in plain words what was wrong,
field by field, so that a start can end ``rejected``, an update's validator can refuse it, and a
signal can be recorded. Nothing here raises.

Pure and deterministic: it imports only pydantic, temporalio's ``RawValue`` and our leaf types.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from temporalio.common import RawValue

from workflows.problems import problems
from workflows.types import excerpt

M = TypeVar("M", bound=BaseModel)

MAX_PROBLEMS = 20
"""A refusal lists at most this many problems (a hostile payload can have thousands)."""


@dataclass(frozen=True)
class Refusal:
    """Why a payload was refused, with an excerpt of what was sent."""

    why: str
    problems: list[str] = field(default_factory=list)
    payload: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    """Best-effort excerpts of well-known fields (``approver``, ``operator`` …) for the record."""


def problems_of(exc: ValidationError, *, limit: int = MAX_PROBLEMS) -> list[str]:
    """One plain line per pydantic error, located by its dotted path (``targets.0.id: ...``)."""
    return problems(exc, limit=limit)


def _known_fields(value: Any, names: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    out: dict[str, Any] = {}
    for name in names:
        got = value.get(name)
        if isinstance(got, str):
            out[name] = excerpt(got, 128)
        elif isinstance(got, list):
            out[name] = [excerpt(x, 128) for x in got[:20]]
    return out


def decode(
    model: type[M],
    args: Sequence[Any],
    *,
    what: str,
    optional: bool = False,
    record_fields: Sequence[str] = (),
) -> M | Refusal:
    """Decode the one payload of a handler into ``model``, or say why not.

    Args:
        model: the payload's model.
        args: what the handler received (``*args``): normally exactly one value.
        what: how to name the payload in messages (``"the approval"``, ``"the change request"``).
        optional: no payload (or ``null``) means the model's defaults.
        record_fields: top-level fields to excerpt into :attr:`Refusal.fields` for the record.
    """
    if len(args) > 1:
        return Refusal(
            f"{what} must be one JSON object, not {len(args)} arguments",
            payload=excerpt(list(args)),
        )
    value = args[0] if args else None
    if isinstance(value, RawValue):
        encoding = value.payload.metadata.get("encoding", b"").decode("utf-8", "replace")
        return Refusal(
            f"{what} is not JSON (encoding {excerpt(encoding or 'none', 40)}); send one JSON object",
            payload=excerpt(value.payload.data),
        )
    if value is None:
        if optional:
            value = {}
        else:
            missing = "no payload" if not args else "null"
            return Refusal(f"{what} is missing ({missing}); send one JSON object")
    if isinstance(value, BaseModel):  # a typed caller in the same process (tests, replayer)
        value = value.model_dump(mode="json")
    known = _known_fields(value, record_fields)
    if not isinstance(value, dict):
        return Refusal(
            f"{what} must be a JSON object, not {type(value).__name__}",
            payload=excerpt(value),
        )
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = problems_of(exc)
        return Refusal(
            f"{what} is invalid: " + "; ".join(problems),
            problems=problems,
            payload=excerpt(value),
            fields=known,
        )
    except Exception as exc:  # a validator that raised something else: still a refusal
        return Refusal(
            f"{what} is invalid: {excerpt(str(exc) or type(exc).__name__, 300)}",
            payload=excerpt(value),
            fields=known,
        )
