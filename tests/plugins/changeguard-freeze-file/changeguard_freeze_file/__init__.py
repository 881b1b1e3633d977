"""``freeze-file``: no changes while an operator-controlled freeze file exists.

An example of a third-party guardrail: one class implementing the contract, one entry point.
Operators declare a freeze by writing a reason into the file, and lift it by deleting the file.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from guardrails.base import CheckContext, Guardrail
from workflows.models import Category, CheckResult


class FreezeFileParams(BaseModel):
    """Params: where the freeze file lives."""

    model_config = ConfigDict(extra="forbid")
    path: Path


class FreezeFile(Guardrail[FreezeFileParams]):
    """Fail while the freeze file exists; its text is the reason."""

    name = "freeze-file"
    category = Category.TIMING
    params_model = FreezeFileParams
    default_owner = "release-eng"
    default_timeout = timedelta(seconds=5)

    async def check(self, params: FreezeFileParams, ctx: CheckContext) -> CheckResult:
        """Read the freeze file, if any."""
        if not params.path.exists():
            return ctx.passed(f"no freeze declared ({params.path} is absent)")
        why = params.path.read_text().strip() or "no reason given"
        return ctx.failed(
            f"a change freeze is declared in {params.path}: {why}",
            remedy=f"wait until the freeze is lifted (the file {params.path} is deleted)",
            evidence={"path": str(params.path)},
        )
