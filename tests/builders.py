"""Builders the suites share: one valid change request, with only what a test cares about said.

A test states the fields that matter to it and takes the rest from :data:`REQUEST_DEFAULTS`: a
``recording`` change (the fake kind of ``tests/fakes.py``) by ``alice`` of ``payments`` in
``prod`` on one target, in one wave, with no rules of its own (the suite's default bundle,
:data:`tests.helpers.OPEN_BUNDLE`, then judges it).
"""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from workflows.models import ChangeContext, ChangeRequest, Target

REQUEST_DEFAULTS: dict[str, Any] = {
    "kind": "recording",
    "summary": "a test change",
    "requester": "alice",
    "team": "payments",
    "environment": "prod",
    "targets": [{"id": "t1"}],
    "rollout": {"waves": ["100%"]},
}
"""Every field of :func:`change_request_dict` but ``change_id`` (fresh per call)."""


def new_change_id(prefix: str = "chg") -> str:
    """A change id of its own (``<prefix>-`` and 8 hex digits), so tests never share a workflow."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def target_list(count: int, name: str = "t{}") -> list[dict[str, Any]]:
    """``count`` targets named by ``name`` formatted with 1..count (``"h{:03d}"``: h001, h002…)."""
    return [{"id": name.format(i)} for i in range(1, count + 1)]


def change_request_dict(**overrides: Any) -> dict[str, Any]:
    """A valid change request as a plain mapping (the workflow's JSON input), fields overridden.

    ``change_id`` is fresh unless given; any other field of ``ChangeRequest`` may be given too.
    The defaults are copied, so a caller may change the result in place.
    """
    doc: dict[str, Any] = {"change_id": new_change_id(), **copy.deepcopy(REQUEST_DEFAULTS)}
    doc.update(overrides)
    return doc


def change_request(**overrides: Any) -> ChangeRequest:
    """A valid :class:`ChangeRequest` (see :func:`change_request_dict`), fields overridden."""
    return ChangeRequest(**change_request_dict(**overrides))


def change_context(target: str = "web-01") -> ChangeContext:
    """What a gate judges: a ``recording`` change by ``alice`` of ``payments`` in ``prod``."""
    return ChangeContext(
        change_id=new_change_id(),
        kind="recording",
        summary="test",
        requester="alice",
        team="payments",
        environment="prod",
        targets=[Target(id=target)],
        deadline=datetime.now(UTC) + timedelta(hours=24),
    )
