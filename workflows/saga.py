"""A small typed compensation helper for workflow code.

Rules it enforces (docs/design.md, "Architecture rules"):

- a compensation is registered *before* its forward step runs, so a step that times out after
  taking effect is still undone (compensations must be ``revert_if_applied``-safe);
- :meth:`Saga.unwind` runs compensations in reverse order of registration, each under
  ``asyncio.shield`` so that a second cancellation cannot interrupt the unwind;
- a failing compensation never stops the others: failures are collected and returned.

Callers unwind on ``BaseException`` — ``asyncio.CancelledError`` is not an ``Exception``.

The point of no return (docs/long-running-changes.md, "Irreversible steps"): a saga undoes only
what can be undone. Once a step a change kind declares irreversible has run on a target (its
``ApplyResult.irreversible``, a failed mutation's error details, or a ``TargetBatch``'s
``BatchResult.irreversible``), ``GuardedChange`` does not call :meth:`Saga.unwind` for a later
failure: it pauses and pages for a human, who rolls forward (``resume``) or ends the change
``failed`` with every irreversible target and step named, nothing undone. Before that step, a
failure unwinds as above. A compensation that reaches an applied irreversible step anyway fails
non-retryably (``IrreversibleStep``) rather than pretend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from temporalio import workflow

from workflows.models import CompensationFailure
from workflows.unwind import failure_of as failure_of  # its home is workflows.unwind

T = TypeVar("T")


@dataclass(frozen=True)
class _Compensation:
    step: str
    action: Callable[[], Awaitable[object]]


class Saga:
    """Registered compensations of one workflow run, unwound in reverse order."""

    def __init__(self) -> None:
        self._compensations: list[_Compensation] = []

    @property
    def steps(self) -> list[str]:
        """Names of the registered compensations, in registration order."""
        return [c.step for c in self._compensations]

    async def run(
        self,
        step: str,
        forward: Callable[[], Awaitable[T]],
        compensation: Callable[[], Awaitable[object]],
    ) -> T:
        """Register ``compensation`` for ``step``, then run ``forward``.

        The compensation stays registered if ``forward`` fails: it may have taken effect before
        failing, and compensations are written to be safe either way.
        """
        self.add(step, compensation)
        return await forward()

    def add(self, step: str, compensation: Callable[[], Awaitable[object]]) -> None:
        """Register ``compensation`` for ``step`` whose forward work runs elsewhere.

        For several steps one forward call makes (a chunk of ``apply_change_many``: one
        compensation per target, registered before the chunk runs).
        """
        self._compensations.append(_Compensation(step, compensation))

    async def unwind(self) -> tuple[list[str], list[CompensationFailure]]:
        """Run every compensation in reverse order, shielded from cancellation.

        Returns:
            The steps compensated successfully and the failures, both in unwind order.
        """
        pending = list(reversed(self._compensations))
        self._compensations.clear()
        task = asyncio.ensure_future(self._unwind_all(pending))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # Cancelled again while unwinding: the shielded task keeps going; wait for it.
            return await task

    @staticmethod
    async def _unwind_all(
        pending: list[_Compensation],
    ) -> tuple[list[str], list[CompensationFailure]]:
        done: list[str] = []
        failures: list[CompensationFailure] = []
        for comp in pending:
            try:
                await comp.action()
                done.append(comp.step)
            except BaseException as exc:
                message, kind = failure_of(exc)
                workflow.logger.warning(
                    "compensation failed", extra={"step": comp.step, "error": message}
                )
                failures.append(CompensationFailure(step=comp.step, error=message, error_type=kind))
        return done, failures
