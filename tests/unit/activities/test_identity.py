"""Verified identity, piece by piece: the canonical form, key parsing, SSHSIG and ID-token checks."""

from __future__ import annotations

import base64
import functools
import hashlib
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey
from pydantic import ValidationError
from temporalio.testing import WorkflowEnvironment

from activities.audit import AuditActivities, SqliteAuditStore
from activities.directory import DirectoryError, YamlDirectory
from activities.identity import IdentityActivities, check_token, read_jwks, verify
from activities.ssh_keys import check_sshsig, parse_public_key
from cli.signing import ssh_sign
from guardrails.policy import IdentityPolicy
from tests import fakes
from tests.fakes import Switch
from tests.helpers import until_phase, until_status
from worker.main import build_worker
from workflows.identity import approval_document, request_digest, start_document
from workflows.identity_models import (
    OidcIdentity,
    OperatorKeys,
    Signature,
    SignedDocument,
    VerifyInput,
    canonical_bytes,
    document_digest,
)
from workflows.models import (
    Approval,
    ChangeRequest,
    ChangeResult,
    Directory,
    OperatorAction,
    OptOutRule,
    Outcome,
    Phase,
    Target,
)

DOC = SignedDocument(
    action="approve",
    change_id="chg-1",
    actor="bob",
    reason="hotfix for incident 42",
    report_hash="fddbc87c8fe67aa8",
    rules=["change-window"],
    expires_at="2026-12-01T13:00:00Z",
)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _key(tmp_path: Path, name: str, kind: str = "ed25519") -> tuple[Path, str]:
    path = tmp_path / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"{name}@laptop", "-f", str(path)],
        check=True,
    )
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", f"{path}.pub"], check=True, capture_output=True, text=True
    )
    return path, printed.stdout.split()[1]


def test_canonical_bytes_are_sorted_compact_json_and_the_digest_is_their_sha256() -> None:
    """The bytes a signature covers are one spelling only: keys sorted, no spaces."""
    expected = (
        b'{"action":"approve","actor":"bob","change_id":"chg-1",'
        b'"expires_at":"2026-12-01T13:00:00Z","reason":"hotfix for incident 42",'
        b'"report_hash":"fddbc87c8fe67aa8","request_digest":"","rules":["change-window"],"v":1}'
    )
    assert canonical_bytes(DOC) == expected
    assert document_digest(DOC) == hashlib.sha256(expected).hexdigest()
    again = SignedDocument.model_validate_json(DOC.model_dump_json())
    assert canonical_bytes(again) == expected


def test_expiry_must_be_utc_whole_seconds() -> None:
    """An expiry with an offset or fractions is refused: it would have two spellings."""
    with pytest.raises(ValidationError, match="whole seconds"):
        SignedDocument(
            action="abort", change_id="c", actor="a", expires_at="2026-12-01T13:00+01:00"
        )


def test_request_digest_ignores_the_signature() -> None:
    """Signing a request does not change what its signature covers."""
    req = ChangeRequest(
        change_id="chg-1",
        kind="k",
        summary="s",
        requester="alice",
        team="t",
        environment="prod",
        targets=[Target(id="t1")],
    )
    doc = start_document(req, "chg-1", "2026-12-01T13:00:00Z")
    signed = req.model_copy(update={"signature": Signature(document=doc, sshsig="x")})
    assert request_digest(signed) == request_digest(req) == doc.request_digest
    assert "signature" not in req.model_dump()  # unsigned payloads are as they always were


def test_new_policy_fields_leave_unchanged_policies_hashing_as_before() -> None:
    """require_signed and identity.oidc are left out of a policy's dump unless set."""
    assert "require_signed" not in OptOutRule(approvers=["sre"]).model_dump()
    assert OptOutRule(approvers=["sre"], require_signed=True).model_dump()["require_signed"]
    assert "oidc" not in IdentityPolicy().model_dump()


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_public_keys_parse_and_fingerprint_as_ssh_keygen_prints(tmp_path: Path, kind: str) -> None:
    """Each OpenSSH key type parses; the fingerprint equals ``ssh-keygen -l``'s; signatures verify."""
    path, fingerprint = _key(tmp_path, "bob", kind)
    key = parse_public_key(path.with_suffix(".pub").read_text())
    assert key.fingerprint == fingerprint
    assert key.line.count(" ") == 1  # the comment is dropped
    armored = ssh_sign(DOC, path)
    assert check_sshsig(armored, canonical_bytes(DOC)).key == key
    other = DOC.model_copy(update={"reason": "something else"})
    forged = check_sshsig(armored, canonical_bytes(other))
    assert forged.key is None
    assert forged.why.startswith(f"forged: the SSH signature by {fingerprint} does not verify")


def test_wrong_namespace_and_garbage_are_refused_with_their_reason(tmp_path: Path) -> None:
    """A signature made for git is not one for changeguard; a non-signature is forged."""
    path, _ = _key(tmp_path, "bob")
    git = subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-n", "git", "-f", str(path)],
        input=canonical_bytes(DOC),
        capture_output=True,
        check=True,
    ).stdout.decode()
    assert check_sshsig(git, canonical_bytes(DOC)).why == (
        "wrong namespace: signed in namespace 'git'; sign with ssh-keygen -Y sign -n changeguard"
    )
    assert check_sshsig("hello", canonical_bytes(DOC)).why.startswith("forged:")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("ssh-dss AAAAB3NzaC1kc3M=", "is not an OpenSSH public key line"),
        ("ssh-ed25519 !!!!", "cannot be read"),
        ("hello", "is not an OpenSSH public key line"),
    ],
)
def test_bad_key_lines_are_refused(line: str, problem: str) -> None:
    """A line that is not a supported public key says so and how to write one."""
    with pytest.raises(ValueError, match=problem):
        parse_public_key(line)


async def test_directory_long_form_carries_keys_and_oidc_and_locates_bad_keys(
    tmp_path: Path,
) -> None:
    """Both entry forms load; keys are normalised; a bad key is located in the file."""
    path, _ = _key(tmp_path, "bob")
    line = path.with_suffix(".pub").read_text().strip()
    file = tmp_path / "operators.yaml"
    file.write_text(
        "operators:\n"
        "  alice: [web-team]\n"
        f"  bob: {{groups: [sre-leads], keys: ['{line}']}}\n"
        "  dana: {groups: [sre-leads], oidc: [{issuer: 'https://idp', subject: d1}]}\n"
    )
    directory = await YamlDirectory(file).load()
    assert directory.operators == {
        "alice": ["web-team"],
        "bob": ["sre-leads"],
        "dana": ["sre-leads"],
    }
    assert directory.identities == {
        "bob": OperatorKeys(keys=[" ".join(line.split()[:2])]),
        "dana": OperatorKeys(oidc=[OidcIdentity(issuer="https://idp", subject="d1")]),
    }
    file.write_text("operators:\n  bob: {groups: [x], keys: ['ssh-ed25519 nope'], colour: red}\n")
    with pytest.raises(DirectoryError) as caught:
        await YamlDirectory(file).load()
    assert caught.value.problems == ["operators.bob.colour: unknown field"]
    file.write_text("operators:\n  bob: {groups: [x], keys: ['ssh-ed25519 nope']}\n")
    with pytest.raises(DirectoryError) as caught:
        await YamlDirectory(file).load()
    assert caught.value.problems[0].startswith("operators.bob.keys[0]: ssh-ed25519 key nope")


def _token(key: ECKey, **claims: object) -> str:
    base: dict[str, object] = {
        "iss": "https://idp",
        "sub": "d1",
        "aud": "changeguard",
        "nonce": document_digest(DOC),
    }
    base["exp"] = int((NOW + timedelta(minutes=5)).timestamp())
    return jwt.encode({"alg": "ES256"}, {**base, **claims}, key)


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({}, ""),
        ({"aud": "grafana"}, "wrong audience: the ID token is for 'grafana'"),
        ({"nonce": "abc"}, "wrong nonce"),
        ({"exp": int(NOW.timestamp()) - 1}, "expired: the ID token has expired"),
        ({"iss": "https://evil"}, "unknown issuer 'https://evil'"),
    ],
)
def test_id_token_checks(claims: dict[str, object], why: str) -> None:
    """An ID token counts only from a trusted issuer, for changeguard, unexpired, with the nonce."""
    key = ECKey.generate_key("P-256")
    jwks = {"https://idp": {"keys": [key.as_dict(private=False)]}}
    checked = check_token(_token(key, **claims), jwks=jwks, nonce=document_digest(DOC), now=NOW)
    assert checked.why.startswith(why) and bool(checked.why) == bool(why)
    if not why:
        assert (checked.issuer, checked.subject) == ("https://idp", "d1")
    other = ECKey.generate_key("P-256")
    forged = check_token(_token(other), jwks=jwks, nonce=document_digest(DOC), now=NOW)
    assert forged.why.startswith("forged: the ID token's signature does not verify")


def test_verify_refuses_a_signature_carrying_both_or_neither() -> None:
    """A signature is an SSHSIG or an ID token, never both, never neither."""
    for sig in (Signature(document=DOC), Signature(document=DOC, sshsig="a", oidc_token="b")):
        inp = VerifyInput(change_id="chg-1", signature=sig, expected=DOC, now=NOW)
        result = verify(inp, directory=Directory(), jwks={})
        assert (result.ok, result.why) == (
            False,
            "forged: a signature carries exactly one of sshsig or oidc_token",
        )


async def test_a_removed_key_stops_counting_at_the_next_verification(tmp_path: Path) -> None:
    """verify_signature reads the directory on every call: revoking bob's key refuses his next one."""
    path, fingerprint = _key(tmp_path, "bob")
    line = path.with_suffix(".pub").read_text().strip()
    file = tmp_path / "operators.yaml"
    file.write_text(f"operators:\n  bob: {{groups: [sre-leads], keys: ['{line}']}}\n")
    activities = IdentityActivities(YamlDirectory(file))
    inp = VerifyInput(
        change_id="chg-1",
        signature=Signature(document=DOC, sshsig=ssh_sign(DOC, path)),
        expected=DOC,
        now=NOW,
    )
    accepted = await activities.verify_signature(inp)
    assert (accepted.ok, accepted.identity, accepted.method) == (True, fingerprint, "sshsig")
    file.write_text("operators:\n  bob: [sre-leads]\n")  # revoked
    refused = await activities.verify_signature(inp)
    assert not refused.ok and refused.why.startswith(
        f"key not in directory: sshsig identity {fingerprint} is not enrolled for 'bob'"
    )


def test_a_jwks_is_read_from_a_url_or_a_file(tmp_path: Path) -> None:
    """The issuer's JWKS comes from a file path or an http(s) URL."""
    import http.server
    import json
    import threading

    document = {"keys": [ECKey.generate_key("P-256").as_dict(private=False)]}
    (tmp_path / "jwks.json").write_text(json.dumps(document))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        assert read_jwks(url) == document == read_jwks(str(tmp_path / "jwks.json"))
    finally:
        server.shutdown()
        server.server_close()


def test_a_token_without_a_signature_algorithm_is_forged() -> None:
    """Alg none (or a shared secret) never verifies against an issuer's JWKS."""
    key = ECKey.generate_key("P-256")
    jwks = {"https://idp": {"keys": [key.as_dict(private=False)]}}
    good = _token(key)
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    unsigned = f"{header}.{good.split('.')[1]}."
    checked = check_token(unsigned, jwks=jwks, nonce=document_digest(DOC), now=NOW)
    assert checked.why.startswith("forged: the ID token's signature does not verify")


async def test_a_verification_that_fails_for_good_is_a_recorded_refusal(
    env: WorkflowEnvironment, task_queue: str, tmp_path: Path
) -> None:
    """A directory broken after the change began refuses a signed signal; the change lives on."""
    path, _ = _key(tmp_path, "bob")
    line = path.with_suffix(".pub").read_text().strip()
    file = tmp_path / "operators.yaml"
    file.write_text(f"operators:\n  bob: {{groups: [sre-leads], keys: ['{line}']}}\n")
    store = SqliteAuditStore(tmp_path / "audit.db")
    Switch.outcome = "fail"
    request = ChangeRequest(
        change_id="id-broken-directory",
        kind="recording",
        summary="s",
        requester="alice",
        team="web",
        environment="prod",
        targets=[Target(id="t1")],
        policy={"guardrails": [{"use": "switch", "opt_out": {"approvers": ["sre-leads"]}}]},
    )
    async with build_worker(
        env.client,
        task_queue=task_queue,
        guardrails=fakes.guardrails(),
        kinds=fakes.kinds(),
        audit=AuditActivities(store, f"yaml:{file}"),
    ):
        handle = await env.client.start_workflow(
            "GuardedChange",
            request,
            id="id-broken-directory",
            task_queue=task_queue,
            result_type=ChangeResult,
        )
        status = await until_phase(handle, Phase.AWAITING_APPROVAL)
        assert status.report is not None
        approval = Approval(
            guardrails=["switch"], approver="bob", reason="r", report_hash=status.report.report_hash
        )
        doc = approval_document(approval, "id-broken-directory", "2099-01-01T00:00:00Z")
        signed = approval.model_copy(
            update={"signature": Signature(document=doc, sshsig=ssh_sign(doc, path))}
        )
        file.write_text("operators: [not, a, mapping]\n")
        await handle.signal("approve_signal", signed)
        status = await until_status(handle, lambda s: bool(s.rejected_approvals))
        assert status.rejected_approvals[-1].why.startswith(
            "unverified: the signature could not be checked (operator directory"
        )
        assert status.phase is Phase.AWAITING_APPROVAL
        await handle.execute_update("abort", OperatorAction(operator="bob", reason="end"))
        assert (await handle.result()).outcome is Outcome.ABORTED
    store.close()
