"""Edge validation of change files: every problem listed and located, before any workflow starts.

A change file is YAML (or JSON) holding a ``ChangeRequest``. The edge never crashes on one: every
malformed file ends in :class:`ChangeFileError` (the CLI exits 2), whatever it holds. In order:

1. the file is read with :func:`guardrails.yamlfile.read_yaml`: binary or non-UTF-8 files, files
   over 2 MB, duplicate keys (both lines named), non-string keys, nesting deeper than 50 levels,
   infinities and NaN, unsupported tags are refused, and so is any alias (``*name``): a change file
   is short enough to write out, and refusing aliases outright rules out alias bombs;
2. a ``policy`` given as a path is read the same way (relative to the change file) and inlined,
   *before* the request is validated (workers never read a path), its problems under ``policy``;
3. the request, as JSON with its policy inlined, must fit :data:`REQUEST_MAX_BYTES`;
4. the ``ChangeRequest`` model, the policy additions against the local guardrails, the change
   kind and its ``params``, and a ``deadline`` that must lie in the future.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from activities.kinds.base import default_registry as kind_registry
from guardrails.base import default_registry as guardrail_registry
from guardrails.plugins import params_errors
from guardrails.policy import PolicyError, parse_additions
from guardrails.problems import ProblemsError
from guardrails.yamlfile import YamlError, YamlIssue, read_yaml
from workflows.inputs import problems_of
from workflows.models import REQUEST_MAX_BYTES, ChangeRequest
from workflows.timing_models import not_before_problem
from workflows.types import excerpt

MAX_PROBLEMS = 50
"""A change file's error lists at most this many problems."""


class ChangeFileError(ProblemsError):
    """A change file is unusable; ``problems`` lists every mistake, each located."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        shown = [excerpt(p, 500) for p in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            shown.append(f"… and {len(problems) - MAX_PROBLEMS} more problem(s)")
        name = excerpt(str(path), 300)
        super().__init__(shown, source=str(path), headline=f"{name}: {len(problems)} problem(s)")


def _here(issue: YamlIssue) -> str:
    """A problem in the change file itself (the error already names the file)."""
    if issue.line is None:
        return issue.message
    return f"line {issue.line}, column {issue.column}: {issue.message}"


def _read(path: Path) -> dict[str, Any]:
    try:
        data = read_yaml(path, str(path), max_aliases=0)
    except YamlError as exc:
        raise ChangeFileError(path, [_here(i) for i in exc.issues]) from None
    if not isinstance(data, dict):
        shown = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ChangeFileError(
            path,
            [
                f"the file must hold a mapping of ChangeRequest fields (kind, summary, …), not {shown}"
            ],
        )
    return data


def _inline_policy(path: Path, policy: str) -> tuple[Any, list[str]]:
    """Read a policy file named by a change file; its content, or the problems under ``policy``."""
    target = Path(policy).expanduser() if policy.strip() else Path()
    if not policy.strip():
        return None, ["policy: an empty path; give a file, or the rules inline"]
    if not target.is_absolute():
        target = path.parent / target
    try:
        raw = read_yaml(target, excerpt(policy, 200))
    except YamlError as exc:
        return None, [f"policy: {p}" for p in exc.problems]
    if raw is None:
        return {}, []  # an empty file adds nothing
    if not isinstance(raw, dict):
        return None, [
            f"policy: {excerpt(policy, 200)}: must hold a mapping of additions "
            f"(guardrails, signals, responses), not a {type(raw).__name__}"
        ]
    return raw, []


def _policy_problems(policy: Any) -> list[str]:
    try:
        parse_additions(policy, guardrail_registry())
    except PolicyError as exc:
        return [p if p.startswith("policy") else f"policy: {p}" for p in exc.problems]
    except Exception as exc:  # a third-party guardrail's params model that raised anything else
        return [f"policy: could not be checked: {type(exc).__name__}: {excerpt(str(exc), 300)}"]
    return []


def _kind_problems(data: dict[str, Any]) -> list[str]:
    kind_name = data.get("kind")
    if not isinstance(kind_name, str):
        return []  # the model says what is wrong with it
    kinds = kind_registry()
    if kind_name not in kinds:
        known = ", ".join(kinds.names())
        return [f"kind: no change kind named {excerpt(kind_name, 128)!r} (known: {known})"]
    raw = data.get("params") or {}
    if not isinstance(raw, dict):
        return []
    try:
        return params_errors(kinds.get(kind_name), raw)
    except Exception as exc:  # a third-party change kind's params model that raised anything else
        return [f"params: could not be checked: {type(exc).__name__}: {excerpt(str(exc), 300)}"]


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def load_change(
    path: Path, *, now: datetime | None = None, not_before: str | None = None
) -> ChangeRequest:
    """Read, validate and complete a change file (its policy inlined).

    Args:
        path: the change file.
        now: the time a ``deadline`` must lie after (default: now).
        not_before: ``--not-before``: an ISO 8601 time with a zone that replaces the file's.

    Raises:
        ChangeFileError: with every problem found, each located by line or by field.
    """
    data = _read(path)
    problems: list[str] = []
    if not_before is not None:
        data["not_before"] = not_before

    if isinstance(data.get("policy"), str):
        inlined, policy_problems = _inline_policy(path, data["policy"])
        problems += policy_problems
        if policy_problems:
            data.pop("policy")  # reported; the request's other fields are still checked
        else:
            data["policy"] = inlined
    if isinstance(data.get("policy"), dict):
        problems += _policy_problems(data["policy"])

    size = len(json.dumps(data, ensure_ascii=False, default=str).encode())
    if size > REQUEST_MAX_BYTES:
        problems.append(
            f"the request is {size:,} bytes as JSON (its policy inlined); at most "
            f"{REQUEST_MAX_BYTES:,} bytes are accepted: split the change or trim its params"
        )

    request: ChangeRequest | None = None
    try:
        request = ChangeRequest.model_validate(data)
    except ValidationError as exc:
        problems += problems_of(exc, limit=MAX_PROBLEMS)
    except Exception as exc:  # a validator that raised something else: still a located refusal
        problems.append(f"the request could not be validated: {type(exc).__name__}: {exc}")

    if request is not None and request.deadline is not None:
        current = now or datetime.now(UTC)
        if request.deadline <= current:
            problems.append(
                f"deadline: must be in the future (it is {_when(request.deadline)}, "
                f"now {_when(current)})"
            )

    if request is not None:
        scheduled = not_before_problem(
            request.not_before, request.deadline, now or datetime.now(UTC)
        )
        if scheduled:
            problems.append(f"not_before: {scheduled}")

    problems += _kind_problems(data)

    if problems or request is None:
        raise ChangeFileError(path, problems or ["the request is invalid"])
    return request
