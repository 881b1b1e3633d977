"""Workflow code calls activities through workflows/calls.py by names the worker registers."""

from __future__ import annotations

import ast
import inspect

from temporalio import activity

from activities.audit import AuditActivities
from guardrails.base import Services
from guardrails.bundle import BundleHolder
from tests.helpers import OPEN_BUNDLE, REPO_ROOT
from worker import registry
from workflows import calls, names

WORKFLOWS = REPO_ROOT / "workflows"


def registered(audit: AuditActivities) -> set[str]:
    fns = registry.activities(
        bundle=BundleHolder.fixed(OPEN_BUNDLE),
        audit=audit,
        services=Services(temporal_client=object()),  # type: ignore[arg-type]
    )
    out = set()
    for fn in fns:
        definition = activity._Definition.from_callable(fn)
        assert definition is not None and definition.name is not None, fn
        out.add(definition.name)
    return out


def test_every_name_workflow_code_calls_is_registered_by_the_worker(audit: AuditActivities) -> None:
    missing = set(names.ACTIVITIES) - registered(audit)
    assert not missing, f"workflows/names.py names activities no worker registers: {missing}"


def test_calls_uses_only_the_names_module() -> None:
    tree = ast.parse(inspect.getsource(calls))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "names"
    }
    assert {getattr(names, attr) for attr in used} == set(names.ACTIVITIES)
    strings = {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }
    assert not strings & set(names.ACTIVITIES), "an activity name spelled as a string in calls.py"


def test_no_workflow_module_imports_an_activity_module() -> None:
    offenders = []
    for path in sorted(WORKFLOWS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if isinstance(node, ast.Import):
                module = next((a.name for a in node.names if a.name.startswith("activities")), None)
            if module and (module == "activities" or module.startswith("activities.")):
                offenders.append(f"{path.name}: {module}")
    assert not offenders
