"""Error type names: the ``type`` of every ``ApplicationError`` changeguard raises.

A leaf module (standard library only) so workflows, activities and retry policies share one list.
Tests assert on these constants, never on message text.

The tree::

    ApplicationError(type=...)
    ├── business failures — non-retryable: retrying cannot help
    │   ├── InvalidInput            a payload or parameter failed validation
    │   ├── PolicyInvalid           the policy file is malformed or names unknown guardrails
    │   ├── UnknownChangeKind       no change kind is registered under that name
    │   ├── UnknownGuardrail        no guardrail is registered under that name
    │   ├── TargetRejected          the target API refused the mutation (4xx)
    │   ├── ContractViolation       a plug-in returned something its contract forbids
    │   ├── NothingApplied          a mutation reported that it changed nothing (not a success)
    │   ├── IrreversibleStep        a revert reached a step that cannot be undone (needs a human)
    │   ├── Refused                 an update's validator refused it (approval, abort, rollback…)
    │   └── BatchStopped            a TargetBatch ended early: the change's stop cancelled it
    └── transient failures — retried with jittered backoff
        ├── TargetUnavailable       the target API is unreachable or answered 5xx
        ├── CircuitOpen             the worker's breaker for that API is open; retry after a delay
        ├── CheckFailed             a guardrail raised (the gate turns it into an ``error`` result)
        ├── AuditUnavailable        the audit store (change ledger) cannot be reached right now
        ├── IdentityUnavailable     an identity provider's JWKS cannot be read right now
        └── MutationPaused          the activity was paused (Temporal activity pause); resumes later
"""

from __future__ import annotations

INVALID_INPUT = "InvalidInput"
POLICY_INVALID = "PolicyInvalid"
UNKNOWN_CHANGE_KIND = "UnknownChangeKind"
UNKNOWN_GUARDRAIL = "UnknownGuardrail"
TARGET_REJECTED = "TargetRejected"
CONTRACT_VIOLATION = "ContractViolation"
NOTHING_APPLIED = "NothingApplied"
IRREVERSIBLE_STEP = "IrreversibleStep"
REFUSED = "Refused"
BATCH_STOPPED = "BatchStopped"

TARGET_UNAVAILABLE = "TargetUnavailable"
CIRCUIT_OPEN = "CircuitOpen"
CHECK_FAILED = "CheckFailed"
MUTATION_PAUSED = "MutationPaused"
AUDIT_UNAVAILABLE = "AuditUnavailable"
IDENTITY_UNAVAILABLE = "IdentityUnavailable"

NON_RETRYABLE: tuple[str, ...] = (
    INVALID_INPUT,
    POLICY_INVALID,
    UNKNOWN_CHANGE_KIND,
    UNKNOWN_GUARDRAIL,
    TARGET_REJECTED,
    CONTRACT_VIOLATION,
    NOTHING_APPLIED,
    IRREVERSIBLE_STEP,
    REFUSED,
    BATCH_STOPPED,
)
"""Error types no retry policy retries; used as ``non_retryable_error_types``."""
