"""Wire models of ``apply_change_many``: several targets' mutations in one activity.

A leaf module (pydantic and :mod:`workflows.models` only), shared by the activity, the workflow
helper (:mod:`workflows.apply_many`) and tests. Every target keeps its own ``ApplyInput`` (its own
idempotency key), its own ``ApplyResult`` and its own ledger record (``effect:<idempotency_key>``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from workflows.models import ApplyInput, ApplyResult


class ApplyManyInput(BaseModel):
    """Input of ``apply_change_many``: the targets' mutations, applied in this order."""

    items: list[ApplyInput] = Field(default_factory=list)


class ApplyManyFailure(BaseModel):
    """The target whose mutation failed for good; nothing after it in the chunk was attempted."""

    target_id: str
    message: str
    type: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class ApplyManyResult(BaseModel):
    """Output of ``apply_change_many``: one result per target applied, in order, then any failure.

    ``results`` covers the targets before ``failed``; with no failure, every target of the input.
    """

    results: list[ApplyResult] = Field(default_factory=list)
    failed: ApplyManyFailure | None = None


class ApplyManyCheckpoint(BaseModel):
    """The heartbeat checkpoint of ``apply_change_many``: each done target's result, by its key.

    A retried attempt finds it in its progress handle's ``resumed_from`` and skips those targets
    (their effects are in place and in the ledger). A hint, as every checkpoint: a target whose
    beat did not reach the server before a crash is applied again, and its idempotency key makes
    that apply nothing.
    """

    done: dict[str, ApplyResult] = Field(default_factory=dict)
