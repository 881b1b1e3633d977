"""Verified identity end to end: real ssh-keygen keys, a JWKS made here, the real update and signal.

Approvals go through the ``approve`` update and ``approve_signal``; operator actions and requests
are signed the same way (docs/approvals.md).

Two workers on the dev server share every case (both replay every task): ``strict`` requires signed
approvals and operator actions; ``requests`` requires signed requests only, so unsigned approvals
still count there unless a rule says ``require_signed``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import RSAKey
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities, SqliteAuditStore
from cli.signing import ssh_sign
from tests import fakes
from tests.fakes import Switch
from tests.helpers import OPEN_BUNDLE, until_phase, until_status
from tests.integration.conftest import Cli
from worker.main import build_worker
from workflows.identity import action_document, approval_document, start_document
from workflows.identity_models import (
    Signature,
    SignedDocument,
    canonical_bytes,
    document_digest,
    utc_stamp,
)
from workflows.models import (
    Approval,
    ApprovalResult,
    AuditAction,
    AuditQuery,
    AuditRecord,
    ChangeRequest,
    ChangeResult,
    ChangeStatus,
    OperatorAction,
    Outcome,
    Phase,
    RecheckInput,
    Target,
)

ISSUER = "https://idp.test"
SOON = timedelta(minutes=30)


@dataclass
class Identities:
    """Keys made with ssh-keygen, an OIDC signing key, and the files the workers read."""

    root: Path
    jwk: RSAKey
    fingerprints: dict[str, str]

    def key(self, who: str) -> Path:
        return self.root / who

    def token(self, nonce: str, *, sub: str = "dana-sub", aud: str = "changeguard") -> str:
        now = int(datetime.now(UTC).timestamp())
        claims = {"iss": ISSUER, "sub": sub, "aud": aud, "exp": now + 600, "iat": now}
        claims["nonce"] = nonce
        return jwt.encode({"alg": "RS256", "kid": self.jwk.kid}, claims, self.jwk)


def _keygen(path: Path, kind: str) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)], check=True
    )
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{path}.pub"], check=True, capture_output=True, text=True
    )
    return printed.stdout.split()[1]  # "256 SHA256:… comment (ED25519)"


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Identities:
    root = tmp_path_factory.mktemp("identity")
    fingerprints = {
        "alice": _keygen(root / "alice", "ed25519"),
        "bob": _keygen(root / "bob", "ed25519"),
        "carol": _keygen(root / "carol", "ecdsa"),
        "mallory": _keygen(root / "mallory", "ed25519"),
    }
    jwk = RSAKey.generate_key(2048, parameters={"kid": "test-key"})
    (root / "jwks.json").write_text(json.dumps({"keys": [jwk.as_dict(private=False)]}))

    def pub(who: str) -> str:
        return (root / f"{who}.pub").read_text().strip()

    directory = {
        "operators": {
            "alice": {"groups": ["web-team", "sre-leads"], "keys": [pub("alice")]},
            "alice-ops": {"groups": ["sre-leads"], "keys": [pub("alice")]},  # the same person
            "bob": {"groups": ["sre-leads"], "keys": [pub("bob")]},
            "carol": {"groups": ["sre-leads"], "keys": [pub("carol")]},
            "dana": {"groups": ["sre-leads"], "oidc": [{"issuer": ISSUER, "subject": "dana-sub"}]},
            "erin": ["sre-leads"],
        }
    }
    (root / "operators.yaml").write_text(yaml.safe_dump(directory))
    return Identities(root, jwk, fingerprints)


def _bundle(ids: Identities, **identity: str) -> dict[str, Any]:
    oidc = [{"issuer": ISSUER, "jwks": str(ids.root / "jwks.json")}]
    return {**OPEN_BUNDLE, "identity": {**identity, "oidc": oidc}}


@dataclass
class Env:
    client: Client
    store: SqliteAuditStore
    strict: str  # task queue: approvals and operator actions must be signed
    requests: str  # task queue: requests must be signed

    def records(self, change_id: str, action: AuditAction) -> list[AuditRecord]:
        return [r for r in self.store.list(AuditQuery(change_id=change_id)) if r.action is action]

    async def records_once(
        self, change_id: str, action: AuditAction, count: int, within: float = 15
    ) -> list[AuditRecord]:
        """The records, once ``count`` are stored or ``within`` seconds have passed.

        A refused signal shows in the status before its ``record_audit`` activity has written it.
        """
        deadline = asyncio.get_running_loop().time() + within
        while len(found := self.records(change_id, action)) < count:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.1)
        return found


@pytest.fixture(scope="module")
async def env(dev_env: WorkflowEnvironment, ids: Identities) -> AsyncIterator[Env]:
    store = SqliteAuditStore(ids.root / "audit.db")
    directory = f"yaml:{ids.root / 'operators.yaml'}"
    strict, requests = f"id-strict-{uuid.uuid4().hex[:6]}", f"id-req-{uuid.uuid4().hex[:6]}"
    common: dict[str, Any] = {"guardrails": fakes.guardrails(), "kinds": fakes.kinds()}
    async with (
        build_worker(
            dev_env.client,
            task_queue=strict,
            bundle=_bundle(ids, approvals="required", operator_actions="required"),
            audit=AuditActivities(store, directory),
            max_cached_workflows=0,
            **common,
        ),
        build_worker(
            dev_env.client,
            task_queue=requests,
            bundle=_bundle(ids, requests="required"),
            audit=AuditActivities(store, directory),
            max_cached_workflows=0,
            **common,
        ),
    ):
        yield Env(dev_env.client, store, strict, requests)
    store.close()


@pytest.fixture(autouse=True)
def switch_off() -> None:
    Switch.outcome = "fail"


def _request(*, required: int = 1, extra: list[dict[str, Any]] | None = None) -> ChangeRequest:
    rule = {"use": "switch", "opt_out": {"approvers": ["sre-leads"], "required": required}}
    return ChangeRequest(
        change_id=f"id-{uuid.uuid4().hex[:8]}",
        kind="recording",
        summary="needs a verified approval",
        requester="alice",
        team="web",
        environment="prod",
        targets=[Target(id="t1")],
        policy={"guardrails": [rule, *(extra or [])]},
    )


def _signed_request(ids: Identities, req: ChangeRequest, who: str = "alice") -> ChangeRequest:
    assert req.change_id is not None
    doc = start_document(req, req.change_id, utc_stamp(datetime.now(UTC) + SOON))
    return req.model_copy(
        update={"signature": Signature(document=doc, sshsig=ssh_sign(doc, ids.key(who)))}
    )


async def _start(env: Env, req: ChangeRequest, queue: str) -> WorkflowHandle[Any, ChangeResult]:
    return await env.client.start_workflow(
        "GuardedChange", req, id=req.change_id or "", task_queue=queue, result_type=ChangeResult
    )


def _approval(status: ChangeStatus, who: str, **kw: Any) -> Approval:
    assert status.report is not None
    fields: dict[str, Any] = {
        "guardrails": ["switch"],
        "approver": who,
        "reason": "hotfix for incident 42",
        "report_hash": status.report.report_hash,
    }
    return Approval(**{**fields, **kw})


def _doc(approval: Approval, cid: str, **kw: Any) -> SignedDocument:
    doc = approval_document(approval, cid, utc_stamp(datetime.now(UTC) + SOON))
    return doc.model_copy(update=kw)


def _ssh(ids: Identities, approval: Approval, doc: SignedDocument, key: str) -> Approval:
    return approval.model_copy(
        update={"signature": Signature(document=doc, sshsig=ssh_sign(doc, ids.key(key)))}
    )


def _oidc(approval: Approval, doc: SignedDocument, token: str) -> Approval:
    return approval.model_copy(update={"signature": Signature(document=doc, oidc_token=token)})


def _sign_in_namespace(namespace: str, doc: SignedDocument, key: Path) -> str:
    """What ``ssh-keygen -Y sign`` makes in another namespace than changeguard's."""
    command = ["ssh-keygen", "-Y", "sign", "-n", namespace, "-f", str(key)]
    done = subprocess.run(command, input=canonical_bytes(doc), capture_output=True, check=True)
    return done.stdout.decode()


def _cause(exc: WorkflowUpdateFailedError) -> str:
    return str(getattr(exc.cause, "message", exc.cause))


async def _send(handle: WorkflowHandle[Any, Any], channel: str, approval: Approval) -> str:
    """Send through the update or the signal: "" when it counted, else the refusal's reason."""
    if channel == "update":
        try:
            await handle.execute_update("approve", approval, result_type=ApprovalResult)
        except WorkflowUpdateFailedError as exc:
            return _cause(exc)
        return ""
    before = await handle.query("status", result_type=ChangeStatus)
    counts = (len(before.rejected_approvals), len(before.approvals))
    await handle.signal("approve_signal", approval)
    status = await until_status(
        handle, lambda s: (len(s.rejected_approvals), len(s.approvals)) != counts
    )
    if len(status.rejected_approvals) > counts[0]:
        return status.rejected_approvals[-1].why
    return ""


@pytest.mark.parametrize("channel", ["update", "signal"])
async def test_signed_approvals_count_and_every_forgery_is_refused_with_its_reason(
    env: Env, ids: Identities, channel: str
) -> None:
    """SSH- and OIDC-signed approvals count (ledger: fingerprint, subject); each bad one says why."""
    req = _signed_request(ids, _request(required=2))
    handle = await _start(env, req, env.strict)
    status = await until_phase(handle, Phase.AWAITING_APPROVAL)
    cid = req.change_id
    assert cid is not None
    bob = _approval(status, "bob")
    past = utc_stamp(datetime.now(UTC) - timedelta(minutes=1))
    git = _sign_in_namespace("git", _doc(bob, cid), ids.key("bob"))
    tampered = _ssh(ids, bob, _doc(bob, cid), "bob")
    assert tampered.signature is not None
    tampered.signature.document.rules = ["switch", "other-rule"]
    dana = _approval(status, "dana")
    dana_doc = _doc(dana, cid)
    refusals = [
        (_approval(status, "erin"), "unsigned: sign it with changeguard approve --sign"),
        (_ssh(ids, bob, _doc(bob, cid), "mallory"), "key not in directory: sshsig identity"),
        (
            _ssh(
                ids,
                _approval(status, "alice-ops"),
                _doc(_approval(status, "alice-ops"), cid),
                "alice",
            ),
            "four eyes: " + ids.fingerprints["alice"],
        ),
        (_ssh(ids, bob, _doc(bob, cid, change_id="another-change"), "bob"), "other change"),
        (
            _ssh(ids, bob, _doc(bob, cid, report_hash="0123456789abcdef"), "bob"),
            "other report hash",
        ),
        (_ssh(ids, bob, _doc(bob, cid, expires_at=past), "bob"), "expired: the signature expired"),
        (
            bob.model_copy(update={"signature": Signature(document=_doc(bob, cid), sshsig=git)}),
            "wrong namespace",
        ),
        (tampered, "forged: the SSH signature by " + ids.fingerprints["bob"]),
        (
            _oidc(dana, dana_doc, ids.token(document_digest(dana_doc), aud="other-app")),
            "wrong audience",
        ),
        (_oidc(dana, dana_doc, ids.token("not-the-digest")), "wrong nonce"),
    ]
    for approval, reason in refusals:
        why = await _send(handle, channel, approval)
        assert why.startswith(reason), (reason, why)
    # Update refusals of the unsigned and replay kind never enter history; the rest are audited.
    audited = len(refusals) if channel == "signal" else len(refusals) - 1
    rejected = await env.records_once(cid, AuditAction.APPROVAL_REJECTED, audited)
    assert len(rejected) == audited

    signed_bob = _ssh(ids, bob, _doc(bob, cid), "bob")
    assert await _send(handle, channel, signed_bob) == ""
    replayed = await _send(handle, channel, signed_bob)
    assert replayed.startswith("replay: this signed approve was accepted already at "), replayed
    token = ids.token(document_digest(dana_doc))
    assert await _send(handle, channel, _oidc(dana, dana_doc, token)) == ""
    result = await handle.result()
    assert result.outcome is Outcome.COMPLETED
    granted = {r.actor: r.detail for r in env.records(cid, AuditAction.APPROVAL)}
    assert granted["bob"]["identity"] == ids.fingerprints["bob"]
    assert granted["bob"]["method"] == "sshsig"
    assert granted["dana"] == {
        "identity": "dana-sub",
        "method": "oidc",
        "issuer": ISSUER,
        "signed_digest": document_digest(dana_doc),
    }
    started = env.records(cid, AuditAction.STARTED)[0]
    assert started.detail["requester_identity"] == ids.fingerprints["alice"]


async def test_ecdsa_key_signs_too_and_a_signed_action_is_required_for_operators(
    env: Env, ids: Identities
) -> None:
    """Carol's ECDSA key signs; unsigned abort and recheck are refused; a signed abort counts."""
    req = _request(required=2)
    handle = await _start(env, req, env.strict)
    status = await until_phase(handle, Phase.AWAITING_APPROVAL)
    cid = req.change_id
    assert cid is not None
    carol = _approval(status, "carol")
    assert await _send(handle, "update", _ssh(ids, carol, _doc(carol, cid), "carol")) == ""

    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("abort", OperatorAction(operator="bob", reason="stop"))
    assert _cause(refused.value) == "unsigned: sign it with changeguard abort --sign"
    await handle.signal("recheck", RecheckInput(requested_by="bob", reason="look again"))
    status = await until_status(handle, lambda s: bool(s.refused_signals))
    assert status.refused_signals == [
        "recheck from bob: unsigned: sign it with changeguard recheck --sign"
    ]
    expires = utc_stamp(datetime.now(UTC) + SOON)
    doc = action_document("recheck", cid, "bob", "look again", expires)
    signed = RecheckInput(
        requested_by="bob",
        reason="look again",
        signature=Signature(document=doc, sshsig=ssh_sign(doc, ids.key("bob"))),
    )
    await handle.signal("recheck", signed)
    await until_status(handle, lambda s: s.gate_runs >= 2)

    doc = action_document("abort", cid, "bob", "error budget burning", expires)
    action = OperatorAction(
        operator="bob",
        reason="error budget burning",
        signature=Signature(document=doc, sshsig=ssh_sign(doc, ids.key("bob"))),
    )
    await handle.execute_update("abort", action)
    assert (await handle.result()).outcome is Outcome.ABORTED
    (abort,) = env.records(cid, AuditAction.ABORT)
    assert (abort.actor, abort.detail["identity"]) == ("bob", ids.fingerprints["bob"])
    (recheck,) = env.records(cid, AuditAction.RECHECK)
    assert recheck.detail["identity"] == ids.fingerprints["bob"]
    (approval,) = env.records(cid, AuditAction.APPROVAL)
    assert approval.detail["identity"] == ids.fingerprints["carol"]


@pytest.mark.parametrize(
    ("signer", "reason"),
    [
        (None, "the change request is unsigned: sign it with changeguard start --sign"),
        ("mallory", "the change request's signature does not count: key not in directory"),
    ],
)
async def test_unsigned_or_missigned_start_is_rejected_before_any_check(
    env: Env, ids: Identities, signer: str | None, reason: str
) -> None:
    """Where requests must be signed, a raw-client start without alice's signature ends rejected."""
    req = _request()
    if signer is not None:
        req = _signed_request(ids, req, signer)
    handle = await _start(env, req, env.requests)
    result = await handle.result()
    assert result.outcome is Outcome.REJECTED
    assert result.message.startswith(reason), result.message
    status = await handle.query("status", result_type=ChangeStatus)
    assert status.gate_runs == 0 and result.report is None
    assert env.records(req.change_id or "", AuditAction.REFUSED)[0].reason == result.message


async def test_unsigned_approvals_count_unless_the_rule_requires_a_signature(
    env: Env, ids: Identities, cli: Cli
) -> None:
    """Unsigned approvals count where nothing requires a signature; a require_signed rule's do not.

    bob's signature for that rule is made by ``changeguard approve --sign`` (and ``--print-json``).
    """
    health = {
        "use": "fake-health",
        "params": {"outcome": "fail"},
        "opt_out": {"approvers": ["sre-leads"]},
    }
    req = _request(extra=[health])
    req.policy["guardrails"][0]["opt_out"]["require_signed"] = True  # type: ignore[index]
    handle = await _start(env, _signed_request(ids, req), env.requests)
    status = await until_phase(handle, Phase.AWAITING_APPROVAL)
    assert (
        await _send(handle, "update", _approval(status, "erin", guardrails=["fake-health"])) == ""
    )
    why = await _send(handle, "update", _approval(status, "erin"))
    assert why == "unsigned: sign it with changeguard approve --sign"

    cli = Cli(cli.address, env.requests)
    args = ["approve", handle.id, "--guardrail", "switch", "--approver", "bob"]
    args += ["--reason", "hotfix", "--sign", "--key", str(ids.key("bob"))]
    printed = await cli(*args, "--print-json")
    assert printed.code == 0, printed.stderr
    pasted = Approval.model_validate(printed.json())
    assert pasted.signature is not None and "BEGIN SSH SIGNATURE" in pasted.signature.sshsig
    done = await cli(*args)
    assert done.code == 0, done.stderr
    assert (await handle.result()).outcome is Outcome.COMPLETED
    by = {
        r.guardrail: r.detail.get("identity", "")
        for r in env.records(handle.id, AuditAction.APPROVAL)
    }
    assert by == {"fake-health": "", "switch": ids.fingerprints["bob"]}
