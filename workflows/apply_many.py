"""A batch's targets in chunks: one ``apply_change_many`` activity applies several targets.

Used by ``TargetBatch`` when the change kind declares ``apply_many_size`` (learned from
``validate_change`` through ``MutationOptions.apply_many``) and the batch runs behind
``APPLY_MANY_PATCH``; histories recorded before it, and kinds that do not opt in, keep one
``apply_change`` per target (:func:`workflows.mutations.apply_targets`).

The batch's ``max_parallel`` budget still counts mutations: its targets are cut into chunks of at
most ``apply_many`` targets, with at least ``max_parallel`` chunks when there are that many
targets, and at most ``max_parallel`` chunks run at once, each applying its targets one after the
other, so no more than ``max_parallel`` mutations are ever in flight. Each target keeps its own
idempotency key, result, ledger record and compensation (the parent's revert batch reverts each
target on its own, ``revert_if_applied``). After the first failure no chunk starts; the ones in
flight end and the first failure is raised, as in ``apply_targets``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    import workflows.calls as calls
    import workflows.observe as observe
    from workflows.apply_many_models import ApplyManyInput
    from workflows.models import ApplyResult, Target
    from workflows.mutation_keys import apply_input
    from workflows.progress_models import MutationOptions
    from workflows.summaries import line

APPLY_MANY_PATCH = "apply-many"
"""``workflow.patched`` id: a batch of an opted-in kind applies its targets in chunks."""


APPLY_MANY_ROUNDS_PATCH = "apply-many-rounds"
"""``workflow.patched`` id: chunks come in whole rounds of ``max_parallel`` (:func:`rounds`)."""


def rounds(targets: list[Target], size: int, max_parallel: int) -> list[list[Target]]:
    """``targets`` in order, in chunks of at most ``size``, as whole rounds of ``max_parallel``.

    :func:`chunks` cut 100 targets, 25 at most, 3 at a time into 25, 25, 25, 25: the fourth chunk
    then ran alone, one mutation in flight of the three allowed, for a quarter of the batch. Here
    the number of chunks is a multiple of ``max_parallel`` (six of 17 or 15), so every round keeps
    the whole budget busy but the last chunk's few targets.

    >>> [len(c) for c in rounds([Target(id=str(i)) for i in range(100)], 25, 3)]
    [17, 17, 17, 17, 17, 15]
    """
    width = max(1, max_parallel)
    per_round = math.ceil(len(targets) / (width * max(1, size)))
    per = max(1, math.ceil(len(targets) / (width * max(1, per_round))))
    return [targets[i : i + per] for i in range(0, len(targets), per)]


def chunks(targets: list[Target], size: int, max_parallel: int) -> list[list[Target]]:
    """``targets`` in order, in chunks of at most ``size``, and at least ``max_parallel`` chunks.

    >>> [len(c) for c in chunks([Target(id=str(i)) for i in range(100)], 25, 1)]
    [25, 25, 25, 25]
    >>> [len(c) for c in chunks([Target(id=str(i)) for i in range(10)], 25, 4)]
    [3, 3, 3, 1]
    """
    per = max(1, min(size, math.ceil(len(targets) / max(1, max_parallel))))
    return [targets[i : i + per] for i in range(0, len(targets), per)]


async def apply_chunks(
    *,
    change_id: str,
    kind: str,
    params: dict[str, Any],
    targets: list[Target],
    max_parallel: int,
    options: MutationOptions,
    on_applied: Callable[[str], None],
    on_result: Callable[[ApplyResult], None],
    on_error: Callable[[str, BaseException], None],
) -> None:
    """Apply ``targets`` in chunks of ``options.apply_many``; raise the first failure at the end."""
    limit = asyncio.Semaphore(max_parallel)
    failed: list[BaseException] = []

    async def one(chunk: list[Target]) -> None:
        async with limit:
            if failed:
                return
            items = [apply_input(change_id, kind, params, t) for t in chunk]
            try:
                out = await observe.traced(
                    "mutations",
                    observe.many_attributes(items),
                    calls.apply_change_many(
                        ApplyManyInput(items=items),
                        start_to_close=options.start_to_close * len(chunk),
                        heartbeat=options.heartbeat_timeout,
                        summary=line(
                            f"{kind} {chunk[0].id}..{chunk[-1].id} ({len(chunk)} targets)"
                        ),
                    ),
                )
            except BaseException as exc:
                failed.append(exc)
                on_error(chunk[0].id, exc)
                raise
            for result in out.results:
                on_result(result)
                on_applied(result.target_id)
            if out.failed is not None:
                refused = ApplicationError(
                    out.failed.message,
                    out.failed.details,
                    type=out.failed.type or None,
                    non_retryable=True,
                )
                failed.append(refused)
                on_error(out.failed.target_id, refused)
                raise refused

    cut = rounds if workflow.patched(APPLY_MANY_ROUNDS_PATCH) else chunks
    await asyncio.gather(
        *(one(c) for c in cut(targets, options.apply_many, max_parallel)),
        return_exceptions=True,
    )
    if failed:
        raise failed[0]
