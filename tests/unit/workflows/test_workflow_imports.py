"""Workflow code loads no I/O library: the sandbox re-imports what it loads for every workflow run.

`workflows/report.py` used `change_window.spans` through the guardrail package, whose `__init__`
pulled in httpx, rich and icalendar for every gate; the span algebra now lives in workflows/spans.py.

And what the workflow modules pass through really is passed through: inside
``imports_passed_through()``, ``from workflows import calls`` re-executed ``workflows/calls.py`` (and
``names``, ``errors``, ``priorities`` …) in every workflow's sandbox, because the sandbox's own copy of
the ``workflows`` package answers the ``from`` and Python then loads the submodule without the
sandbox's import hook; ``import workflows.calls as calls`` goes through the hook.
"""

from __future__ import annotations

import importlib.machinery
import subprocess
import sys
from typing import Any

import pytest
from temporalio import workflow
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from tests.helpers import REPO_ROOT
from worker import registry

HEAVY = ("httpx", "rich", "yaml", "structlog", "icalendar", "psycopg", "cryptography", "holidays")


def test_the_workflow_modules_load_no_io_library() -> None:
    """In a fresh interpreter, importing every workflow definition loads none of ``HEAVY``."""
    code = (
        "import sys\n"
        "import workflows.guarded_change, workflows.gate, workflows.target_lock\n"
        "import workflows.batch, workflows.change_events\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


async def test_a_workflow_sandbox_executes_only_the_workflow_module_afresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Per workflow run the sandbox executes its workflow's module and package, nothing of ours else."""
    executed: list[str] = []
    real = importlib.machinery.SourceFileLoader.exec_module

    def counting(self: Any, module: Any) -> None:
        if workflow.unsafe.in_sandbox():
            executed.append(module.__name__)
        real(self, module)

    monkeypatch.setattr(importlib.machinery.SourceFileLoader, "exec_module", counting)
    runner = SandboxedWorkflowRunner()
    afresh = {}
    for cls in registry.WORKFLOWS:
        executed.clear()
        runner.prepare_workflow(workflow._Definition.must_from_class(cls))
        afresh[cls.__name__] = sorted(m for m in executed if not m.startswith("temporalio."))
    assert afresh == {
        cls.__name__: sorted({"workflows", cls.__module__}) for cls in registry.WORKFLOWS
    }
