"""changeguard's public Python API: ``import changeguard`` (docs/python-api.md).

Start, follow and steer changes::

    client = await changeguard.connect()
    change = await client.start(changeguard.ChangeRequest(...))
    async for status in change.follow():
        ...

Plug-ins and teams import the models and the plug-in contracts from here too
(``changeguard.Guardrail``, ``changeguard.CheckResult``, ``changeguard.ChangeKind``, …).
"""

from activities.kinds.base import ChangeKind
from activities.pagers import Pager
from changeguard.client import (
    Change,
    ChangeExists,
    Client,
    GateRefused,
    NoReport,
    Refused,
    connect,
    with_change_id,
)
from guardrails.base import CheckContext, EmptyParams, Guardrail, Services
from worker.client import TemporalUnreachable
from worker.converter import data_converter
from worker.settings import Settings
from workflows.models import (
    TERMINAL_PHASES,
    Approval,
    ApprovalResult,
    Category,
    ChangeContext,
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    CheckResult,
    CheckStatus,
    Decision,
    Directory,
    GuardrailReport,
    Mode,
    Operator,
    OperatorActionResult,
    OptOut,
    Outcome,
    Phase,
    Rollout,
    Target,
)

__all__ = [
    "TERMINAL_PHASES",
    "Approval",
    "ApprovalResult",
    "Category",
    "Change",
    "ChangeContext",
    "ChangeExists",
    "ChangeKind",
    "ChangeRequest",
    "ChangeResult",
    "ChangeStatus",
    "CheckContext",
    "CheckResult",
    "CheckStatus",
    "Client",
    "Decision",
    "Directory",
    "EmptyParams",
    "GateRefused",
    "Guardrail",
    "GuardrailReport",
    "Mode",
    "NoReport",
    "Operator",
    "OperatorActionResult",
    "OptOut",
    "Outcome",
    "Pager",
    "Phase",
    "Refused",
    "Rollout",
    "Services",
    "Settings",
    "Target",
    "TemporalUnreachable",
    "connect",
    "data_converter",
    "with_change_id",
]
