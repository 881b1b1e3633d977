"""The ``signed_approval`` capture branch: signed requests, approvals and operator actions.

Kept beside ``capture.py`` so that the branch table stays one line per branch. The signer's key is
made with the real ``ssh-keygen`` and enrolled in the capture worker's operator directory (the
file is replaced atomically: other branches read it at the same time).
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cli.signing import ssh_sign
from workflows.identity import action_document, approval_document, start_document
from workflows.identity_models import Signature, SignedDocument, utc_stamp
from workflows.models import (
    Approval,
    ApprovalResult,
    ChangeRequest,
    OperatorAction,
    OperatorActionResult,
    Outcome,
    Phase,
    RecheckInput,
)

if TYPE_CHECKING:
    from tests.replay.capture import Branch, Capture

SIGNER = "signer"


def _keygen(cap: Capture, name: str) -> tuple[Path, str]:
    key = cap.state / f"{name}_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)],
            check=True,
        )
    return key, key.with_suffix(".pub").read_text().strip()


def _enrol(cap: Capture) -> tuple[Path, Path]:
    """Make the signer's and the requester's keys and enrol them in the capture's directory."""
    signer, signer_line = _keygen(cap, SIGNER)
    requester, requester_line = _keygen(cap, "capture")
    directory = cap.state / "operators.yaml"
    text = directory.read_text()
    if SIGNER not in text:
        text += (
            f"  {SIGNER}: {{groups: [sre-leads], keys: ['{signer_line}']}}\n"
            f"  capture: {{keys: ['{requester_line}']}}\n"
        )
        staged = directory.with_suffix(".new")
        staged.write_text(text)
        os.replace(staged, directory)
    return signer, requester


def _sig(doc: SignedDocument, key: Path) -> Signature:
    return Signature(document=doc, sshsig=ssh_sign(doc, key))


def _soon() -> str:
    return utc_stamp(datetime.now(UTC) + timedelta(minutes=30))


async def signed_approval(cap: Capture, branch: Branch) -> None:
    """A signed request; a signed approval for another change refused; a signed one passes.

    Then a second change gets a signed recheck and a signed abort.
    """
    key, requester = _enrol(cap)

    def signed(request: ChangeRequest) -> ChangeRequest:
        assert request.change_id is not None
        doc = start_document(request, request.change_id, _soon())
        return request.model_copy(update={"signature": _sig(doc, requester)})

    request = signed(cap.request(branch, "a"))
    handle = await cap.start(request)
    status = await cap.until(handle, lambda s: s.phase is Phase.AWAITING_APPROVAL)
    assert status.report is not None and request.change_id is not None
    approval = Approval(
        guardrails=["fake-state"],
        approver=SIGNER,
        reason="replay capture",
        report_hash=status.report.report_hash,
    )
    elsewhere = approval_document(approval, "another-change", _soon())
    await handle.signal(
        "approve_signal", approval.model_copy(update={"signature": _sig(elsewhere, key)})
    )
    await cap.until(handle, lambda s: len(s.rejected_approvals) == 1)
    doc = approval_document(approval, request.change_id, _soon())
    await handle.execute_update(
        "approve",
        approval.model_copy(update={"signature": _sig(doc, key)}),
        result_type=ApprovalResult,
    )
    await cap.expect(handle, Outcome.COMPLETED)

    second = cap.request(branch, "b")
    handle = await cap.start(second)
    await cap.until(handle, lambda s: s.phase is Phase.AWAITING_APPROVAL)
    cid = second.change_id or ""
    recheck = action_document("recheck", cid, SIGNER, "look again", _soon())
    await handle.signal(
        "recheck",
        RecheckInput(requested_by=SIGNER, reason="look again", signature=_sig(recheck, key)),
    )
    await cap.until(handle, lambda s: s.gate_runs >= 2 and s.phase is Phase.AWAITING_APPROVAL)
    abort = action_document("abort", cid, SIGNER, "replay capture: abort", _soon())
    await handle.execute_update(
        "abort",
        OperatorAction(operator=SIGNER, reason="replay capture: abort", signature=_sig(abort, key)),
        result_type=OperatorActionResult,
    )
    await cap.expect(handle, Outcome.ABORTED)
