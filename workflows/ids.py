"""Every workflow id changeguard uses, built and parsed here only (pure; safe in workflow code).

The formats are contract: committed replay histories and running changes carry them, so each must
stay byte-identical (docs/design.md, "Public names").

==========================  ===================================  ==========================
workflow                    id                                   built by
==========================  ===================================  ==========================
``GuardedChange``           ``chg-<12 hex>`` (or the file's own)  :func:`new_change_id`
``GuardrailGate`` (child)   ``<change>/gate-<n>``                 :func:`gate_id`
``GuardrailGate`` (checks)  ``<change>/checks-<8 hex>``           :func:`checks_id`
``TargetBatch`` (child)     ``<change>/<mode>-<first target>``    :func:`batch_id`
``ChangeEvents`` (child)    ``<change>/events``                   :func:`events_id`
``TargetLock``              ``lock/<target>``                     :func:`lock_id`
==========================  ===================================  ==========================
"""

from __future__ import annotations

import uuid

CHANGE_PREFIX = "chg-"
LOCK_PREFIX = "lock/"
CHILD_SEPARATOR = "/"


def new_change_id() -> str:
    """A fresh change id, drawn at the edge (never in workflow code: it would differ on replay)."""
    return f"{CHANGE_PREFIX}{uuid.uuid4().hex[:12]}"


def gate_id(change_id: str, run: int) -> str:
    """The id of a change's ``run``-th gate child (counted from 1)."""
    return f"{change_id}/gate-{run}"


def checks_id(change_id: str, nonce: str) -> str:
    """The id of a dry-run gate (``changeguard checks``) for a change that has not started."""
    return f"{change_id}/checks-{nonce}"


def batch_id(change_id: str, mode: str, first_target: str) -> str:
    """The id of a ``TargetBatch`` child applying (or reverting) a batch from ``first_target``."""
    return f"{change_id}/{mode}-{first_target}"


def events_id(change_id: str) -> str:
    """The ``ChangeEvents`` workflow id of a change."""
    return f"{change_id}/events"


def lock_id(target_id: str) -> str:
    """The workflow id of a target's ``TargetLock``."""
    return f"{LOCK_PREFIX}{target_id}"


def lock_target(workflow_id: str) -> str:
    """The target a ``TargetLock`` workflow id locks (the id itself if it is not a lock id)."""
    return workflow_id.removeprefix(LOCK_PREFIX)


def change_of(workflow_id: str) -> str:
    """The change a workflow belongs to: its id up to the first ``/`` (children are ``<change>/…``)."""
    return workflow_id.split(CHILD_SEPARATOR, 1)[0]
