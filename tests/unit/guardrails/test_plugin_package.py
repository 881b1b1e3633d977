"""A third-party guardrail package is installed and found through its entry point."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from guardrails.base import CheckContext, default_registry
from tests.helpers import REPO_ROOT
from workflows.models import Category, ChangeContext, CheckSpec, CheckStatus

PACKAGE = REPO_ROOT / "tests" / "plugins" / "changeguard-freeze-file"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the example package into a directory of its own and put it on sys.path."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(PACKAGE),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))


async def test_entry_point_registers_and_runs(installed: Path, tmp_path: Path) -> None:
    """The installed package's guardrail is registered by entry point and fails while frozen."""
    registry = default_registry()
    assert "freeze-file" in registry.names()
    guardrail = registry.get("freeze-file")
    freeze = tmp_path / "FREEZE"
    freeze.write_text("black friday")
    spec = CheckSpec(guardrail="freeze-file", category=Category.TIMING, owner="release-eng")
    ctx = CheckContext(
        change=ChangeContext(change_id="c", kind="k", environment="prod"),
        spec=spec,
        now=datetime.now(UTC),
    )
    result = await guardrail.check(guardrail.parse_params({"path": str(freeze)}), ctx)
    assert (result.status, result.owner) == (CheckStatus.FAIL, "release-eng")
    assert result.reason == f"a change freeze is declared in {freeze}: black friday"
    freeze.unlink()
    passed = await guardrail.check(guardrail.parse_params({"path": str(freeze)}), ctx)
    assert passed.status is CheckStatus.PASS
