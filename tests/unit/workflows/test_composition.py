"""GuardedChange is composed of collaborators, not mixins; moved logic stays importable from its old place."""

from __future__ import annotations

import ast

from tests.helpers import REPO_ROOT
from workflows import models, mutation_keys, saga, unwind, waves

WORKFLOWS = REPO_ROOT / "workflows"


def _modules() -> dict[str, ast.Module]:
    return {p.name: ast.parse(p.read_text()) for p in sorted(WORKFLOWS.glob("**/*.py"))}


def test_the_models_and_the_saga_re_export_the_logic_from_its_new_home() -> None:
    """Old imports of plan_waves, idempotency_key and failure_of get the one implementation."""
    assert (models.plan_waves, models.idempotency_key, saga.failure_of) == (
        waves.plan_waves,
        mutation_keys.idempotency_key,
        unwind.failure_of,
    )
    assert models.plan_waves(["a", "b", "c", "d"], ["1", "50%", "100%"]) == [
        ["a"],
        ["b"],
        ["c", "d"],
    ]
    assert models.idempotency_key("chg-1", "revert", "web-01") == "chg-1:revert:web-01"


def test_no_workflow_module_imports_the_workflow_it_serves() -> None:
    """Collaborators receive their state: none imports guarded_change (no cycle, no host)."""
    importers = sorted(
        name
        for name, tree in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "workflows.guarded_change"
    )
    assert importers == []


def test_no_workflow_class_declares_a_stub_for_its_host() -> None:
    """No mixin left behind: no method in workflows/ is a bare ``raise NotImplementedError``."""
    stubs = sorted(
        f"{name}:{fn.name}"
        for name, tree in _modules().items()
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(
            isinstance(stmt, ast.Raise)
            and "NotImplementedError" in ast.unparse(stmt.exc or ast.Constant(None))
            for stmt in fn.body
        )
    )
    assert stubs == []
