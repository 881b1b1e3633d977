"""The one names module: every workflow, handler and activity name changeguard registers.

Code calls workflows and handlers by method reference (``GuardedChangeWorkflow.run``,
``.status``); a name is spelled as a string only in its definition and here, for what cannot take
a reference: visibility queries (``WorkflowType = '…'``) and activities called from workflow code
(``workflows/calls.py``), which must not import activity classes.
"""

from __future__ import annotations

GUARDED_CHANGE = "GuardedChange"
GUARDRAIL_GATE = "GuardrailGate"
TARGET_BATCH = "TargetBatch"
TARGET_LOCK = "TargetLock"
CHANGE_EVENTS = "ChangeEvents"

RECHECK = "recheck"
"""``GuardedChange``'s recheck signal, as ``TargetLock`` sends it on hand-over (a reference to
``GuardedChangeWorkflow.recheck`` would load the whole change workflow into the lock's sandbox)."""

# Activities workflow code calls (workflows/calls.py), each registered by worker/registry.py.
RECORD_AUDIT = "record_audit"
CLAIM_CHANGE = "claim_change"
LOAD_DIRECTORY = "load_directory"
VERIFY_SIGNATURE = "verify_signature"
OBSERVE_SIGNALS = "observe_signals"
PAGE = "page"
RESOLVE_POLICY = "resolve_policy"
RESOLVE_ROLLOUT = "resolve_rollout"
RUN_CHECK = "run_check"
CHECK_WAVE_TIMING = "check_wave_timing"
VALIDATE_CHANGE = "validate_change"
APPLY_CHANGE = "apply_change"
APPLY_CHANGE_MANY = "apply_change_many"
REVERT_CHANGE = "revert_change"
SEND_CHANGE_EVENT = "send_change_event"
RELEASE_TARGET_LOCKS = "release_target_locks"
HOLDER_ALIVE = "holder_alive"

ACTIVITIES = (
    RECORD_AUDIT,
    CLAIM_CHANGE,
    LOAD_DIRECTORY,
    VERIFY_SIGNATURE,
    OBSERVE_SIGNALS,
    PAGE,
    RESOLVE_POLICY,
    RESOLVE_ROLLOUT,
    RUN_CHECK,
    CHECK_WAVE_TIMING,
    VALIDATE_CHANGE,
    APPLY_CHANGE,
    APPLY_CHANGE_MANY,
    REVERT_CHANGE,
    SEND_CHANGE_EVENT,
    RELEASE_TARGET_LOCKS,
    HOLDER_ALIVE,
)
"""Every activity workflow code calls; a unit test checks the worker registers each."""
