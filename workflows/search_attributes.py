"""The search attributes changeguard keeps current, so operators find changes in the Web UI list.

A leaf module (``temporalio`` only): workflows upsert these keys, and the dev-server launcher and test
fixtures register them.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

CHANGE_ID = SearchAttributeKey.for_keyword("ChangeId")
CHANGE_KIND = SearchAttributeKey.for_keyword("ChangeKind")
CHANGE_ENVIRONMENT = SearchAttributeKey.for_keyword("ChangeEnvironment")
CHANGE_TEAM = SearchAttributeKey.for_keyword("ChangeTeam")
CHANGE_TARGETS = SearchAttributeKey.for_keyword_list("ChangeTargets")
CHANGE_PHASE = SearchAttributeKey.for_keyword("ChangePhase")
AWAITING_APPROVAL_FROM = SearchAttributeKey.for_keyword_list("AwaitingApprovalFrom")

ALL = (
    CHANGE_ID,
    CHANGE_KIND,
    CHANGE_ENVIRONMENT,
    CHANGE_TEAM,
    CHANGE_TARGETS,
    CHANGE_PHASE,
    AWAITING_APPROVAL_FROM,
)
"""Every key, for registration (``temporal server start-dev --search-attribute NAME=TYPE``)."""


VALUE_BUDGET = 1900
"""Bytes one keyword-list value may take: servers refuse larger ones (2 KiB by default), and a
refused upsert would fail every workflow task of the change."""


def fit_keyword_list(values: list[str], budget: int = VALUE_BUDGET) -> list[str]:
    """The longest prefix of ``values`` whose JSON encoding fits ``budget`` bytes.

    Large changes index only their first targets in ``ChangeTargets``: visibility-based checks
    (``no-conflicting-changes``) see those; ``target-lock`` excludes on every target regardless.
    """
    import json

    out: list[str] = []
    size = 2  # the brackets
    for value in values:
        item = len(json.dumps(value).encode()) + (2 if out else 0)  # ", " (conservative)
        if size + item > budget:
            break
        out.append(value)
        size += item
    return out


def cli_flags() -> list[str]:
    """``--search-attribute`` flags registering every key on ``temporal server start-dev``."""
    kinds = {"KEYWORD": "Keyword", "KEYWORD_LIST": "KeywordList"}
    flags = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}={kinds[key.indexed_value_type.name]}"]
    return flags
