"""One "every problem, located" error: each reader's error derives from it, messages unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from activities.directory import DirectoryError
from cli.changefile import MAX_PROBLEMS, ChangeFileError
from guardrails.bundle import BundleError
from guardrails.policy import PolicyError
from guardrails.problems import ProblemsError
from guardrails.yamlfile import YamlError, YamlIssue
from worker.main import PolicyMissing


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            PolicyError(["guardrails[0].use: unknown"], source="p.yaml"),
            "policy p.yaml is invalid (1 problem):\n  - guardrails[0].use: unknown",
        ),
        (
            PolicyError(["a", "b"], source="request", headline="the request's policy is refused"),
            "the request's policy is refused:\n  - a\n  - b",
        ),
        (
            BundleError(["x.yaml:1: a", "x.yaml:2: b"], source="x.yaml"),
            "policy bundle x.yaml is invalid (2 problems):\n  - x.yaml:1: a\n  - x.yaml:2: b",
        ),
        (
            DirectoryError(["ops.yaml: no such file"], source="ops.yaml"),
            "operator directory ops.yaml is unusable (1 problem):\n  - ops.yaml: no such file",
        ),
        (
            YamlError("c.yaml", [YamlIssue("duplicate key 'a' (first at line 1)", 2, 1)]),
            "c.yaml is unusable (1 problem):\n  - c.yaml:2:1: duplicate key 'a' (first at line 1)",
        ),
        (
            ChangeFileError(Path("c.yaml"), ["kind: missing", "summary: missing"]),
            "c.yaml: 2 problem(s):\n  - kind: missing\n  - summary: missing",
        ),
    ],
)
def test_every_reader_error_is_a_problems_error_with_its_own_message(
    error: ProblemsError, message: str
) -> None:
    """Each error is a ProblemsError whose text is its headline and one line per problem."""
    assert isinstance(error, ProblemsError)
    assert str(error) == message
    assert error.one_line() == f"{error.headline}: " + "; ".join(error.problems)


def test_the_problems_and_source_are_kept_and_a_long_change_file_list_is_cut() -> None:
    """``problems`` and ``source`` are the same attributes everywhere; a change file lists 50."""
    missing = PolicyMissing()
    assert (missing.source, len(missing.problems)) == ("CHANGEGUARD_POLICY", 1)
    assert isinstance(missing, BundleError)
    many = ChangeFileError(Path("c.yaml"), [f"p{i}" for i in range(MAX_PROBLEMS + 5)])
    assert many.source == "c.yaml"
    assert many.problems[-1] == "… and 5 more problem(s)"
    assert len(many.problems) == MAX_PROBLEMS + 1
    assert str(many).startswith(f"c.yaml: {MAX_PROBLEMS + 5} problem(s):\n  - p0\n")


def test_the_base_imports_nothing_but_the_standard_library() -> None:
    """Workflow code may import the base: the module pulls in no yaml, httpx or pydantic."""
    import ast

    import guardrails.problems as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert imported <= {"__future__"}
