"""Wave planning: how a rollout's cumulative wave sizes split a change's targets into waves.

Pure and deterministic (the standard library only), so the workflow, the request model's
validation, the chaos invariants and the CLI share one reading of ``rollout.waves``.
"""

from __future__ import annotations

import math
import re

WAVE_SPEC = re.compile(r"^(\d+)(%?)$")
"""One wave size: a target count (``"3"``) or a share of all targets (``"25%"``)."""


def plan_waves(target_ids: list[str], waves: list[str]) -> list[list[str]]:
    """Split targets into waves; each spec is a cumulative size; empty waves are dropped."""
    n = len(target_ids)
    plan: list[list[str]] = []
    done = 0
    for spec in waves:
        m = WAVE_SPEC.match(spec)
        assert m is not None, spec
        size = int(m.group(1))
        upto = math.ceil(n * size / 100) if m.group(2) else size
        upto = max(done, min(n, upto))
        if upto > done:
            plan.append(target_ids[done:upto])
            done = upto
    return plan
