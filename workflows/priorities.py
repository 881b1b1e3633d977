"""Temporal task priorities: compensations and gates run ahead of bulk forward mutations.

Every activity task of a change waits in one task queue. When a worker is saturated by a large
rollout (or by many changes at once), the queue backs up, and by default it is served first in,
first out: a rollback's first compensation would wait behind every mutation already queued. With
task queue priority (priority keys 1-5, lower first; unset means 3), the matching service hands a
worker the highest-priority task waiting:

==========  ===  ==========================================================================
task        key  why
==========  ===  ==========================================================================
revert      1    a rollback is the answer to an incident: nothing may queue ahead of it
gate        2    checks decide whether a change may go on (and a re-check may stop one)
mutation    4    bulk forward work: it may wait
==========  ===  ==========================================================================

Fairness: a change is started with its team as fairness key (:func:`change_priority`); its
activities and children inherit it (Temporal: an unset field is inherited from the calling
workflow), so within one priority level the matching service round-robins between teams and one
team's 10,000-target rollout does not starve another team's 20-target change.

Keys 1 and 2 may also skip the queue altogether: the worker asks for them to be dispatched eagerly,
in the answer to the workflow task that schedules them (``worker/eager.py``); key 4 never is, so a
free slot is never taken by a mutation ahead of a queued compensation.

Priority is an activity (and workflow) option: it is not part of the command matching on replay,
so old histories replay unchanged (tests/replay). The server must enable it: see
docs/operators.md, "Task priority and fairness".
"""

from __future__ import annotations

from temporalio.common import Priority

from workflows.summaries import fit_bytes

COMPENSATION = Priority(priority_key=1)
GATE = Priority(priority_key=2)
MUTATION = Priority(priority_key=4)
FAIRNESS_KEY_MAX = 64
"""Temporal's limit on a fairness key, in bytes."""


def change_priority(team: str) -> Priority:
    """The priority a change starts with: default key, the team as fairness key."""
    return Priority(fairness_key=fit_bytes(team or "unowned", FAIRNESS_KEY_MAX))
