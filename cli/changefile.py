"""Edge validation of change files: every problem listed by field, before any workflow starts.

A change file is YAML (or JSON) holding a ``ChangeRequest``. Besides the model itself, the edge
checks what the local plug-ins can tell: that the change kind exists and its ``params`` validate, and
that the policy parses and names registered guardrails with valid params. A policy given as a path
is read here (relative to the change file) and sent inline, so workers need not share the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from activities.kinds.base import default_registry as kind_registry
from guardrails.base import default_registry as guardrail_registry
from guardrails.plugins import params_errors, validation_problems
from guardrails.policy import PolicyError, load_policy, validate_against
from workflows.models import ChangeRequest


class ChangeFileError(Exception):
    """A change file is unusable; ``problems`` lists every mistake, each located by field."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s):\n{lines}")


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ChangeFileError(path, [f"cannot read the file: {exc.strerror}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ChangeFileError(path, [f"{where}not valid YAML ({exc})"]) from exc
    if not isinstance(data, dict):
        raise ChangeFileError(path, ["the file must hold a mapping of ChangeRequest fields"])
    return data


def load_change(path: Path) -> ChangeRequest:
    """Read, validate and complete a change file.

    Raises:
        ChangeFileError: with every problem found, located by field.
    """
    data = _read(path)
    problems: list[str] = []
    request: ChangeRequest | None = None
    try:
        request = ChangeRequest.model_validate(data)
    except ValidationError as exc:
        problems += validation_problems(exc)

    kind_name = data.get("kind")
    kinds = kind_registry()
    if isinstance(kind_name, str) and kind_name in kinds:
        raw = data.get("params") or {}
        if isinstance(raw, dict):
            problems += params_errors(kinds.get(kind_name), raw)
    elif isinstance(kind_name, str):
        problems.append(
            f"kind: no change kind named {kind_name!r} (known: {', '.join(kinds.names())})"
        )

    policy = data.get("policy")
    if isinstance(policy, str | dict):
        try:
            parsed, _ = load_policy(policy, base_dir=path.parent)
            validate_against(parsed, guardrail_registry())
            if request is not None:
                request.policy = parsed.model_dump(mode="json", exclude_unset=True)
        except PolicyError as exc:
            problems += [f"policy: {p}" for p in exc.problems]

    if problems or request is None:
        raise ChangeFileError(path, problems)
    return request
