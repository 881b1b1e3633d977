"""The worker process's cyclic garbage collector, tuned once start-up is over.

CPython runs a full (generation-2) collection whenever the objects that survived into the old
generation have grown by a quarter since the last one, and each full collection walks every tracked
object while the event loop waits: every lane of every change stops at once. A worker holds about
120,000 objects from start-up that never die (modules, the SDK, pydantic schemas, plug-ins); a
10,000-target change adds its request, status and results. Measured in ``bench/rollout.py`` at
10,000 targets (bench/README.md), the worker made 14 full collections of 0.19-0.33 s in one
85 s change.

:func:`tune` does what long-running CPython services commonly do once start-up is done:

- ``gc.freeze()`` moves every object alive now into the permanent generation, which no collection
  walks again (nor frees: only start-up objects, which live as long as the process, are there);
- a young-generation threshold of :data:`YOUNG_THRESHOLD` allocations instead of CPython's 700,
  and older generations collected every :data:`OLDER_THRESHOLD` younger ones instead of 10: the
  worker's allocations come in bursts (one workflow task, one batch of results) that die young, so
  collecting them less often costs less and frees the same.

Reference counting still frees every object without a cycle at once; only cycles wait longer.
``CHANGEGUARD_GC_TUNING=0`` leaves CPython's defaults (docs/production.md).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

YOUNG_THRESHOLD = 20_000
"""Net allocations of tracked objects between two young-generation collections (CPython: 700)."""
OLDER_THRESHOLD = 20
"""Collections of a generation between two of the next older one (CPython: 10)."""


@dataclass(frozen=True)
class Tuning:
    """What :func:`tune` did: the objects frozen and the thresholds in force."""

    frozen: int
    thresholds: tuple[int, int, int]


def tune(enabled: bool = True) -> Tuning:
    """Collect, freeze what is alive and raise the thresholds; with ``enabled`` False, nothing.

    Call it once, when the worker's modules are imported and its plug-ins loaded, before it polls;
    calling it again freezes what was made since (harmless, but nothing frozen is collected again).
    """
    if enabled:
        gc.collect()  # garbage made during start-up is freed now, not frozen
        gc.freeze()
        gc.set_threshold(YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)
    first, second, third = gc.get_threshold()
    return Tuning(frozen=gc.get_freeze_count(), thresholds=(first, second, third))
