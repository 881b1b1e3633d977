"""``no-conflicting-changes``: a change does not start while another one is busy on the same things.

Other changes are found through Temporal visibility (``ctx.services.temporal_client``): running
``GuardedChange`` workflows whose search attributes overlap this change's, by shared target
(``ChangeTargets``), same environment (``ChangeEnvironment``) or same team (``ChangeTeam``).

Which changes count as in flight (``in_flight_phases``): by default those in ``Gating``,
``Executing``, ``Baking`` and ``RollingBack``, i.e. the ones that are mutating targets or about to.
``Gating`` is included because a change re-gates before every wave while it is half-way through
its targets, and because two changes gating at the same moment must not both proceed; they block
each other instead, and a recheck of one lets it through once the other waits for approval.
``Waiting``, ``AwaitingApproval`` and ``Blocked`` are left out: a change parked there is not
touching anything, and counting it would let one forgotten change hold every target for up to
its deadline. ``Pending`` (validating, no phase yet) is left out for the same reason. The price:
a change blocked between waves leaves its targets half-changed without counting as a conflict.

The change itself is excluded by ``ChangeId`` (the gate runs as a child ``<change_id>/gate-<n>``
of a different workflow type, and ``changeguard checks`` runs a gate with no parent at all).

The visibility query is a pre-filter: every listed change is checked again against its own
search attributes before it is reported, so a stale or imprecise match (visibility is eventually
consistent) never invents a conflict; a value the server cannot match exactly (see
:func:`matchable`) is left out of the query and matched here instead, so it never hides one.
At most ``limit`` conflicts are reported; the listing stops after :data:`SCAN_LIMIT` changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import Client, WorkflowExecution
from temporalio.service import RPCError

from guardrails.base import CheckContext, Guardrail
from workflows import names
from workflows import search_attributes as sa
from workflows.models import Category, CheckResult, Phase

CLIENT_SERVICE = "temporal_client"
"""The :class:`~guardrails.base.Services` field of the Temporal client (named in messages)."""
WORKFLOW_TYPE = names.GUARDED_CHANGE
TARGETS_PER_QUERY = 200
"""Targets per ``ChangeTargets IN (…)`` query, so a 10,000-target change stays a sane query."""
RPC_TIMEOUT = timedelta(seconds=10)
SCAN_LIMIT = 1000
"""Most running changes examined per check; reaching it without a decision is an ``error``."""
PAGE_SIZE = 100
LISTED = 10
"""How many conflicting changes the reason and remedy name before summarising the rest."""

DEFAULT_IN_FLIGHT = [
    Phase.GATING,
    Phase.EXECUTING,
    Phase.BAKING,
    Phase.PAUSED,  # half applied, waiting for an operator: still in flight
    Phase.ROLLING_BACK,
]


class NoConflictingChangesParams(BaseModel):
    """Params of ``no-conflicting-changes``: what counts as a conflict, and which phases are busy."""

    model_config = ConfigDict(extra="forbid")

    conflict_on: Literal["targets", "environment", "team"] = Field(
        default="targets",
        description="any shared target, the same environment, or the same team",
    )
    in_flight_phases: list[Phase] = Field(
        default_factory=lambda: list(DEFAULT_IN_FLIGHT),
        min_length=1,
        description="phases in which another change counts as in flight",
    )
    limit: int = Field(default=50, ge=1, le=1000, description="most conflicting changes listed")


_SAFE = re.compile(r"[\w .:@/+=-](?:[\w '.:@/+=-]*[\w .:@/+=-])?")


def quote(value: str) -> str:
    """A visibility-query string literal: single quotes, inner quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def matchable(value: str) -> bool:
    """Whether a value can be matched exactly in a visibility query.

    The server cannot match values holding a backslash, nor values starting or ending with a
    quote (it strips every enclosing quote: temporalio/temporal#12019); such values are left out
    of the query and matched on the client instead.
    """
    return _SAFE.fullmatch(value) is not None


def _in(values: Iterable[str]) -> str:
    return "(" + ", ".join(quote(v) for v in values) + ")"


def build_queries(params: NoConflictingChangesParams, ctx: CheckContext) -> list[str]:
    """The visibility queries that find candidate conflicts (one per chunk of targets).

    Every candidate is confirmed against its own search attributes afterwards, so a predicate
    the server cannot match exactly is simply dropped (a broader listing, never a missed one).
    """
    change = ctx.change
    base = (
        f"WorkflowType = {quote(WORKFLOW_TYPE)} AND ExecutionStatus = 'Running' "
        f"AND {sa.CHANGE_PHASE.name} IN {_in(p.value for p in params.in_flight_phases)}"
    )
    if matchable(change.change_id):
        base += f" AND {sa.CHANGE_ID.name} != {quote(change.change_id)}"
    if params.conflict_on in ("environment", "team"):
        key, value = (
            (sa.CHANGE_ENVIRONMENT, change.environment)
            if params.conflict_on == "environment"
            else (sa.CHANGE_TEAM, change.team)
        )
        return [f"{base} AND {key.name} = {quote(value)}" if matchable(value) else base]
    ids = sorted({t.id for t in change.targets if matchable(t.id)})
    if len(ids) < len({t.id for t in change.targets}):
        return [base]
    return [
        f"{base} AND {sa.CHANGE_TARGETS.name} IN {_in(ids[i : i + TARGETS_PER_QUERY])}"
        for i in range(0, len(ids), TARGETS_PER_QUERY)
    ]


class NoConflictingChanges(Guardrail[NoConflictingChangesParams]):
    """Fail while another change is in flight on the same targets, environment or team."""

    name = "no-conflicting-changes"
    category = Category.IN_FLIGHT
    params_model = NoConflictingChangesParams
    default_owner = "release-eng"
    default_timeout = timedelta(seconds=30)
    description = "no other change is in flight on the same targets (or environment, or team)"

    async def check(self, params: NoConflictingChangesParams, ctx: CheckContext) -> CheckResult:
        """List candidate changes through visibility, confirm each, and report the conflicts."""
        client = ctx.services.temporal_client
        if not isinstance(client, Client):
            return ctx.error(
                f"{ctx.spec.guardrail} cannot look for other changes: the worker provides no "
                f"{CLIENT_SERVICE!r} service",
                remedy=(
                    "run the check in a changeguard worker (worker.main.build_worker passes its "
                    f"client), or pass services=Services({CLIENT_SERVICE}=client)"
                ),
            )
        queries = build_queries(params, ctx)
        found: dict[str, dict[str, Any]] = {}
        scanned = 0
        try:
            for query in queries:
                async for execution in client.list_workflows(
                    query,
                    limit=SCAN_LIMIT - scanned,
                    page_size=PAGE_SIZE,
                    rpc_timeout=RPC_TIMEOUT,
                ):
                    scanned += 1
                    conflict = _confirm(execution, params, ctx)
                    if conflict is not None:
                        found.setdefault(conflict["change_id"], conflict)
                    if len(found) > params.limit:
                        break
                if len(found) > params.limit or scanned >= SCAN_LIMIT:
                    break
        except RPCError as exc:
            return ctx.error(
                f"{ctx.spec.guardrail} could not list running changes: visibility query failed "
                f"({exc.status.name}: {exc.message})",
                remedy=(
                    "check that the Temporal server is reachable and that the search attributes "
                    f"{', '.join(k.name for k in sa.ALL)} are registered in the namespace, "
                    "then recheck"
                ),
                evidence={"query": queries[0]},
            )
        truncated = len(found) > params.limit or scanned >= SCAN_LIMIT
        if truncated and not found:
            return ctx.error(
                f"{ctx.spec.guardrail} listed {scanned} running changes without being able to "
                "confirm or rule out a conflict",
                remedy=(
                    f"recheck once fewer changes are in flight, or ask {ctx.spec.owner} to "
                    "narrow the check's conflict_on or in_flight_phases"
                ),
                evidence={"query": queries[0], "scanned": scanned},
            )
        conflicts = sorted(found.values(), key=lambda c: str(c["change_id"]))[: params.limit]
        return _verdict(conflicts, truncated, params, ctx)


def _confirm(
    execution: WorkflowExecution, params: NoConflictingChangesParams, ctx: CheckContext
) -> dict[str, Any] | None:
    """The conflict an execution represents, or ``None`` when its attributes do not conflict."""
    attrs = execution.typed_search_attributes
    change_id = attrs.get(sa.CHANGE_ID) or execution.id
    if ctx.change.change_id in (change_id, execution.id):
        return None
    phase = attrs.get(sa.CHANGE_PHASE)
    if phase not in {p.value for p in params.in_flight_phases}:
        return None
    team = attrs.get(sa.CHANGE_TEAM) or ""
    environment = attrs.get(sa.CHANGE_ENVIRONMENT) or ""
    theirs = set(attrs.get(sa.CHANGE_TARGETS) or [])
    shared = sorted(theirs & {t.id for t in ctx.change.targets})
    if params.conflict_on == "targets" and not shared:
        return None
    if params.conflict_on == "environment" and environment != ctx.change.environment:
        return None
    if params.conflict_on == "team" and team != ctx.change.team:
        return None
    return {
        "change_id": change_id,
        "workflow_id": execution.id,
        "run_id": execution.run_id,
        "team": team,
        "kind": attrs.get(sa.CHANGE_KIND) or "",
        "environment": environment,
        "phase": phase,
        "shared_targets": shared,
    }


def _names(items: list[str], limit: int = LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _scope(params: NoConflictingChangesParams, ctx: CheckContext) -> str:
    if params.conflict_on == "environment":
        return f"in {ctx.change.environment}"
    if params.conflict_on == "team":
        return f"of team {ctx.change.team}"
    return "on targets of this change"


def _verdict(
    conflicts: list[dict[str, Any]],
    truncated: bool,
    params: NoConflictingChangesParams,
    ctx: CheckContext,
) -> CheckResult:
    phases = ", ".join(p.value for p in params.in_flight_phases)
    evidence: dict[str, Any] = {
        "conflict_on": params.conflict_on,
        "in_flight_phases": [p.value for p in params.in_flight_phases],
        "conflicting": [c["change_id"] for c in conflicts],
        "changes": {
            c["change_id"]: {k: v for k, v in c.items() if k != "change_id"} for c in conflicts
        },
        "truncated": truncated,
    }
    if not conflicts:
        return ctx.passed(
            f"no other change is in flight ({phases}) {_scope(params, ctx)}", evidence=evidence
        )

    def line(c: dict[str, Any]) -> str:
        where = f" on {_names(c['shared_targets'])}" if c["shared_targets"] else ""
        return (
            f"{c['change_id']} (team {c['team'] or 'unknown'}, {c['kind'] or 'unknown kind'}, "
            f"{c['environment'] or 'unknown environment'}, {c['phase']}){where}"
        )

    count = f"at least {len(conflicts)}" if truncated else str(len(conflicts))
    noun = "change is" if len(conflicts) == 1 and not truncated else "changes are"
    listed = "; ".join(line(c) for c in conflicts[:LISTED])
    more = f"; … and {len(conflicts) - LISTED} more" if len(conflicts) > LISTED else ""
    waits = ", ".join(
        f"{c['change_id']} (team {c['team'] or 'unknown'})" for c in conflicts[:LISTED]
    )
    teams = sorted({c["team"] for c in conflicts if c["team"]})
    if not teams:
        who = "their requesters"
    else:
        who = f"team {teams[0]}" if len(teams) == 1 else f"teams {_names(teams)}"
    return ctx.failed(
        f"{count} other {noun} in flight {_scope(params, ctx)}: {listed}{more}",
        remedy=f"wait for {waits}{' and the rest' if more else ''} to finish, or coordinate "
        f"with {who}, then recheck",
        evidence=evidence,
    )
