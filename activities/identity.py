"""Verify who signed an approval, operator action or change request (the ``verify_signature`` activity).

Two ways to sign a :class:`~workflows.identity_models.SignedDocument`:

- **SSHSIG** (``ssh-keygen -Y sign -n changeguard -f KEY``, ssh-agent and hardware keys
  included): the armored signature is parsed with ``sshsig`` and verified with ``cryptography``
  against the OpenSSH public keys the operator directory lists for the person named.
- **OIDC**: an ID token from the platform's identity provider whose ``nonce`` is the document's
  digest, verified with ``joserfc`` against the issuer's JWKS (a file or a URL in the bundle's
  ``identity.oidc``), audience ``changeguard``, unexpired, ``iss``/``sub`` enrolled for the person.

Every refusal is a :class:`VerifyResult` with ``ok=False`` and a reason that names the fix; only a
directory or JWKS that cannot be read raises (retryable: the next attempt may read it). The
directory is read again on every call, so a key removed from it stops counting at once.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import structlog
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.directory import DirectoryError, DirectorySource
from activities.ssh_keys import check_sshsig, parse_public_key
from guardrails.policy import IdentityPolicy
from workflows import errors, names
from workflows.identity_models import (
    AUDIENCE,
    IdentityRequirements,
    SignedDocument,
    VerifyInput,
    VerifyResult,
    canonical_bytes,
    document_digest,
    parse_stamp,
)
from workflows.models import Directory

log = structlog.get_logger(__name__)

VERIFY_SIGNATURE = names.VERIFY_SIGNATURE
TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
"""Asymmetric JWS algorithms an ID token may use (never ``none`` or a shared secret)."""


# ----------------------------------------------------------------------------------------- OIDC


@dataclass(frozen=True)
class OidcCheck:
    """An ID token checked: its issuer and subject, or why it does not count."""

    issuer: str = ""
    subject: str = ""
    why: str = ""


def check_token(
    token: str,
    *,
    jwks: dict[str, dict[str, Any]],
    nonce: str,
    now: datetime,
    audience: str = AUDIENCE,
) -> OidcCheck:
    """Check an ID token: a known issuer's JWKS signed it, ``aud``, ``exp`` and ``nonce`` fit.

    Args:
        token: the compact JWT.
        jwks: issuer → its JWKS document (``{"keys": [...]}``).
        nonce: the signed document's digest the token must carry.
        now: the time ``exp`` is judged at.
        audience: the ``aud`` required.
    """
    try:
        claims = json.loads(base64.urlsafe_b64decode(_pad(token.split(".")[1])))
        issuer = str(claims.get("iss", ""))
    except (ValueError, IndexError, AttributeError):
        return OidcCheck(why="forged: the ID token is not a JWT")
    if issuer not in jwks:
        known = ", ".join(sorted(jwks)) or "none"
        return OidcCheck(why=f"unknown issuer {issuer[:200]!r}: the bundle trusts {known}")
    try:
        decoded = jwt.decode(
            token,
            KeySet.import_key_set(jwks[issuer]),  # type: ignore[arg-type]
            algorithms=TOKEN_ALGORITHMS,
        )
    except (JoseError, ValueError) as exc:
        return OidcCheck(why=f"forged: the ID token's signature does not verify ({exc})")
    got = decoded.claims
    aud = got.get("aud")
    audiences = aud if isinstance(aud, list) else [aud]
    if audience not in audiences:
        return OidcCheck(
            why=f"wrong audience: the ID token is for {aud!r}, not {audience!r}; ask the "
            f"identity provider for a token with audience {audience}"
        )
    exp = got.get("exp")
    if not isinstance(exp, int | float) or exp <= now.timestamp():
        return OidcCheck(why="expired: the ID token has expired; get a new one")
    if got.get("nonce") != nonce:
        return OidcCheck(
            why=f"wrong nonce: the ID token's nonce is not this document's digest {nonce}; get a "
            "token with --print-nonce's value as its nonce"
        )
    return OidcCheck(issuer=issuer, subject=str(got.get("sub", "")))


def _pad(part: str) -> str:
    return part + "=" * (-len(part) % 4)


# ----------------------------------------------------------------------------------------- verify


def document_problem(signed: SignedDocument, expected: SignedDocument, change_id: str) -> str:
    """How a signed document differs from what the payload says, or ``""`` when it is the same."""
    if signed.change_id != change_id:
        return (
            f"other change: signed for change {signed.change_id!r}, not {change_id!r}; sign this "
            "change's own approval"
        )
    if signed.action != expected.action:
        return f"other action: signed to {signed.action!r}, not to {expected.action!r}"
    if signed.report_hash != expected.report_hash:
        return (
            f"other report hash: signed for report {signed.report_hash!r}, not "
            f"{expected.report_hash!r}; sign the current report (see changeguard status)"
        )
    for name in ("actor", "rules", "reason", "request_digest"):
        if getattr(signed, name) != getattr(expected, name):
            return (
                f"other {name}: the signed document's {name} {getattr(signed, name)!r} differs "
                f"from the payload's {getattr(expected, name)!r}; sign exactly what you send"
            )
    return ""


def enrolled_names(
    directory: Directory, *, key: str = "", issuer: str = "", subject: str = ""
) -> list[str]:
    """The operators a key fingerprint (or an OIDC issuer and subject) is enrolled for."""
    names = []
    for name, ident in directory.identities.items():
        by_key = bool(key) and any(_fingerprint_of(line) == key for line in ident.keys)
        by_token = bool(subject) and any(
            o.issuer == issuer and o.subject == subject for o in ident.oidc
        )
        if by_key or by_token:
            names.append(name)
    return names


def _fingerprint_of(line: str) -> str:
    try:
        return parse_public_key(line).fingerprint
    except ValueError:
        return ""


def verify(
    inp: VerifyInput, *, directory: Directory, jwks: dict[str, dict[str, Any]]
) -> VerifyResult:
    """Whether ``inp.signature`` counts for ``inp.expected``: the checks, in order (pure)."""
    sig = inp.signature
    doc = sig.document
    digest = document_digest(doc)

    def refuse(why: str) -> VerifyResult:
        return VerifyResult(ok=False, why=why, digest=digest)

    if bool(sig.sshsig) == bool(sig.oidc_token):
        return refuse("forged: a signature carries exactly one of sshsig or oidc_token")
    if sig.sshsig:
        ssh = check_sshsig(sig.sshsig, canonical_bytes(doc))
        if ssh.key is None:
            return refuse(ssh.why)
        identity, method, issuer = ssh.key.fingerprint, "sshsig", ""
        names = enrolled_names(directory, key=identity)
    else:
        token = check_token(sig.oidc_token, jwks=jwks, nonce=digest, now=inp.now)
        if token.why:
            return refuse(token.why)
        identity, method, issuer = token.subject, "oidc", token.issuer
        names = enrolled_names(directory, issuer=issuer, subject=identity)
    if doc.actor not in names:
        return refuse(
            f"key not in directory: {method} identity {identity} is not enrolled for "
            f"{doc.actor!r} in the operator directory ({directory.source or 'unnamed'}); enrol "
            "it under that operator's keys (or oidc), or sign with an enrolled key"
        )
    problem = document_problem(doc, inp.expected, inp.change_id)
    if problem:
        return refuse(problem)
    if parse_stamp(doc.expires_at) <= inp.now:
        return refuse(f"expired: the signature expired at {doc.expires_at}; sign it again")
    if inp.four_eyes and (
        (inp.requester_identity and identity == inp.requester_identity)
        or (inp.requester and inp.requester in names)
    ):
        return refuse(
            f"four eyes: {identity} is the requester {inp.requester}'s own identity; someone "
            "else must approve"
        )
    return VerifyResult(ok=True, identity=identity, method=method, issuer=issuer, digest=digest)


# ----------------------------------------------------------------------------------------- activity


def requirements_of(policy: IdentityPolicy) -> IdentityRequirements:
    """The bundle's ``identity:`` setting as the workflow receives it (at the claim)."""
    return IdentityRequirements(
        approvals=policy.approvals == "required",
        operator_actions=policy.operator_actions == "required",
        requests=policy.requests == "required",
    )


def issuers_of(policy: IdentityPolicy) -> dict[str, str]:
    """The trusted OIDC issuers: issuer → JWKS file or URL."""
    return {i.issuer: i.jwks for i in policy.oidc}


def read_jwks(source: str) -> dict[str, Any]:
    """A JWKS document from a file path or an ``https://``/``http://`` URL.

    Raises:
        OSError, httpx.HTTPError, ValueError: it cannot be read or is not JSON.
    """
    if source.startswith(("https://", "http://")):
        response = httpx.get(source, timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data
    loaded: dict[str, Any] = json.loads(Path(source).read_text(encoding="utf-8"))
    return loaded


class IdentityActivities:
    """The ``verify_signature`` activity, bound to the operator directory and the issuers.

    Args:
        directory: where operators' keys come from (read again on every call).
        issuers: returns issuer → JWKS source (file or URL) from the bundle the worker holds now.
    """

    def __init__(
        self, directory: DirectorySource, issuers: Callable[[], dict[str, str]] | None = None
    ) -> None:
        self.directory = directory
        self.issuers = issuers or dict

    @activity.defn(name=VERIFY_SIGNATURE)
    async def verify_signature(self, inp: VerifyInput) -> VerifyResult:
        """Verify a signature against the directory as it is now; a refusal is a result.

        Raises:
            ApplicationError: the directory or a JWKS cannot be read (retryable), or the
                directory is invalid (non-retryable, ``InvalidInput``).
        """
        try:
            directory = await self.directory.load()
        except DirectoryError as exc:
            raise ApplicationError(
                str(exc), exc.problems, type=errors.INVALID_INPUT, non_retryable=True
            ) from exc
        jwks: dict[str, dict[str, Any]] = {}
        if inp.signature.oidc_token:
            for issuer, source in self.issuers().items():
                try:
                    jwks[issuer] = await asyncio.to_thread(read_jwks, source)
                except (OSError, httpx.HTTPError, ValueError) as exc:
                    raise ApplicationError(
                        f"the JWKS of {issuer} cannot be read from {source}: {exc}",
                        type=errors.IDENTITY_UNAVAILABLE,
                    ) from exc
        result = verify(inp, directory=directory, jwks=jwks)
        log.info(
            "signature verified" if result.ok else "signature refused",
            change_id=inp.change_id,
            action=inp.expected.action,
            actor=inp.expected.actor,
            identity=result.identity,
            why=result.why[:300],
        )
        return result
