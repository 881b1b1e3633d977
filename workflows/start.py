"""Judging a start: what the request model cannot check, and the record of a refused start.

Pure and deterministic (it reads the workflow's clock only through the ``now`` it is given). A
start this refuses ends ``rejected`` with every problem named, before any check or mutation.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from workflows.inputs import Refusal
from workflows.models import REQUEST_MAX_BYTES, ChangeRequest, valid_id
from workflows.timing_models import not_before_problem
from workflows.types import excerpt


def start_problem(
    change_id: str, request: ChangeRequest, args: tuple[Any, ...], now: datetime
) -> Refusal | None:
    """What the model cannot check: the id against the workflow id, size, a past deadline."""
    problems = []
    if not valid_id(change_id):
        problems.append(
            f"the workflow id {excerpt(change_id, 80)!r} is not a valid change id: use "
            "1-128 letters, digits, '.', '_', ':' or '-' (it is the change id)"
        )
    if request.change_id is not None and request.change_id != change_id:
        problems.append(
            f"change_id {request.change_id!r} differs from the workflow id "
            f"{excerpt(change_id, 80)!r}: the change id is the workflow id (omit "
            "change_id, or start the workflow with that id)"
        )
    size = len(json.dumps(args[0], default=str)) if args else 0
    if size > REQUEST_MAX_BYTES:
        problems.append(
            f"the request is {size:,} bytes of JSON; at most {REQUEST_MAX_BYTES:,} are accepted"
        )
    if request.deadline is not None and request.deadline <= now:
        problems.append(
            f"deadline {request.deadline.isoformat()} is in the past; give a future time"
        )
    scheduled = not_before_problem(request.not_before, request.deadline, now)
    if scheduled:
        problems.append(scheduled)
    if not problems:
        return None
    return Refusal("the change request is invalid: " + "; ".join(problems), problems=problems)


def placeholder(change_id: str, decoded: object) -> ChangeRequest:
    """A stand-in request for a start that is refused: what the record can say about it."""
    fields = decoded.fields if isinstance(decoded, Refusal) else {}
    known = decoded.model_dump() if isinstance(decoded, ChangeRequest) else {}

    def pick(name: str) -> str:
        value = known.get(name) or fields.get(name) or ""
        return excerpt(value, 128) if isinstance(value, str) else ""

    return ChangeRequest.model_construct(
        change_id=change_id,
        kind=pick("kind"),
        summary="",
        requester=pick("requester"),
        team=pick("team"),
        environment=pick("environment"),
        targets=[],
        params={},
        policy=None,
        deadline=None,
    )
