"""Wire models of verified identity: signed documents, signatures, keys, the verifier's answer.

A leaf module (pydantic and the standard library only). What a signature covers is the
:class:`SignedDocument`; its canonical bytes (:func:`canonical_bytes`) are what ``ssh-keygen -Y
sign -n changeguard`` signs, and their digest (:func:`document_digest`) is an OIDC ID token's
``nonce``. docs/approvals.md describes the trust model these serve.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, Field, field_validator

NAMESPACE = "changeguard"
"""The SSHSIG namespace every changeguard signature is made in (``ssh-keygen -Y sign -n``)."""
AUDIENCE = "changeguard"
"""The ``aud`` an OIDC ID token must carry to count for changeguard."""
DOCUMENT_VERSION = 1
ACTIONS = ("approve", "abort", "rollback", "resume", "recheck", "start")
"""What a signed document may authorise."""
SIGNATURE_MAX = 16_384
_UTC_SECONDS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_Short = Annotated[str, Field(max_length=128)]


def utc_stamp(when: datetime) -> str:
    """A time as a signed document writes it: UTC, whole seconds, ``Z`` (one spelling only)."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str) -> datetime:
    """The time a :func:`utc_stamp` spells."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


class SignedDocument(BaseModel):
    """What a person signs: one action on one change, by name, until an expiry.

    Every field is a plain string or list so that the canonical JSON is the same in every
    language: keys sorted, no spaces, UTF-8, times as ``YYYY-MM-DDTHH:MM:SSZ``.
    """

    v: int = DOCUMENT_VERSION
    action: str = Field(
        max_length=16, description="approve, abort, rollback, resume, recheck, start"
    )
    change_id: _Short
    actor: _Short = Field(description="the approver, operator or requester named in the payload")
    reason: str = Field(default="", max_length=2000)
    report_hash: str = Field(default="", max_length=64, description="approvals: the report")
    rules: list[_Short] = Field(default_factory=list, max_length=50, description="rule ids, sorted")
    request_digest: str = Field(default="", max_length=64, description="starts: the request")
    expires_at: str = Field(description="UTC, whole seconds: YYYY-MM-DDTHH:MM:SSZ")

    @field_validator("expires_at")
    @classmethod
    def _stamp(cls, value: str) -> str:
        if not _UTC_SECONDS.match(value):
            raise ValueError(
                f"expires_at {value[:40]!r} must be UTC in whole seconds, e.g. 2026-12-01T13:00:00Z"
            )
        return value


class Signature(BaseModel):
    """A signature carried by a payload: the document signed, and an SSHSIG or an ID token."""

    document: SignedDocument
    sshsig: str = Field(
        default="", max_length=SIGNATURE_MAX, description="armored `ssh-keygen -Y sign` output"
    )
    oidc_token: str = Field(
        default="", max_length=SIGNATURE_MAX, description="an ID token whose nonce is the digest"
    )


def canonical_bytes(document: SignedDocument) -> bytes:
    """The exact bytes a signature covers (deterministic JSON)."""
    return json.dumps(
        document.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def document_digest(document: SignedDocument) -> str:
    """SHA-256 of the canonical bytes, hex: an ID token's ``nonce``, and the replay key."""
    return hashlib.sha256(canonical_bytes(document)).hexdigest()


class OidcIdentity(BaseModel):
    """An OIDC identity enrolled for an operator: the token's ``iss`` and ``sub``."""

    issuer: str = Field(min_length=1, max_length=500)
    subject: str = Field(min_length=1, max_length=500)


class OperatorKeys(BaseModel):
    """What may sign for one operator: OpenSSH public key lines and OIDC identities."""

    keys: list[str] = Field(default_factory=list, description="'ssh-ed25519 AAAA…' lines")
    oidc: list[OidcIdentity] = Field(default_factory=list)


class IdentityRequirements(BaseModel):
    """Where the platform bundle requires a signature (the bundle's ``identity:`` setting)."""

    approvals: bool = False
    operator_actions: bool = False
    requests: bool = False


class VerifyInput(BaseModel):
    """Input of ``verify_signature``: a signature and what it must say to count."""

    change_id: str
    signature: Signature
    expected: SignedDocument = Field(description="the payload's own fields (expires_at ignored)")
    now: datetime
    requester: str = ""
    requester_identity: str = Field(default="", description="the signed request's verified key")
    four_eyes: bool = False


class VerifyResult(BaseModel):
    """What ``verify_signature`` found: who signed, or why the signature does not count."""

    ok: bool
    why: str = ""
    identity: str = Field(default="", description="'SHA256:…' key fingerprint, or the OIDC subject")
    method: str = Field(default="", description="'sshsig' or 'oidc'")
    issuer: str = ""
    digest: str = Field(default="", description="the signed document's digest (the replay key)")
