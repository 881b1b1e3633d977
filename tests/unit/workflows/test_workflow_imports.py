"""Workflow code loads no I/O library: the sandbox re-imports what it loads for every workflow run.

`workflows/report.py` used `change_window.spans` through the guardrail package, whose `__init__`
pulled in httpx, rich and icalendar for every gate; the span algebra now lives in workflows/spans.py.
"""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO_ROOT

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
