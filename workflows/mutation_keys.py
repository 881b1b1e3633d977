"""What a mutation is keyed by: its idempotency key, and the inputs of a target's apply and revert.

Beside :mod:`workflows.mutations` (which runs them as saga steps) and pure: it imports only the
leaf models, so :mod:`workflows.models` can re-export :func:`idempotency_key` for the activities,
the benches and the tests that check keys.
"""

from __future__ import annotations

from typing import Any

from workflows.models.mutations import ApplyInput
from workflows.models.request import Target


def idempotency_key(change_id: str, step: str, target_id: str) -> str:
    """The key every side effect carries: the same (change, step, target) never applies twice."""
    return f"{change_id}:{step}:{target_id}"


def apply_input(change_id: str, kind: str, params: dict[str, Any], target: Target) -> ApplyInput:
    """The mutation of one target, keyed by (change, "apply", target)."""
    return ApplyInput(
        change_id=change_id,
        kind=kind,
        step="apply",
        target=target,
        params=params,
        idempotency_key=idempotency_key(change_id, "apply", target.id),
    )


def revert_input(apply: ApplyInput) -> ApplyInput:
    """The compensation of a mutation, keyed by (change, "revert", target)."""
    return apply.model_copy(
        update={
            "step": "revert",
            "idempotency_key": idempotency_key(apply.change_id, "revert", apply.target.id),
            "applied_key": apply.idempotency_key,
        }
    )
