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
