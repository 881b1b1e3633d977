"""OpenSSH public keys and SSH signatures (``SSHSIG``, PROTOCOL.sshsig) for verified identity.

Keys are read with ``cryptography`` (``load_ssh_public_key``) and fingerprinted as ``ssh-keygen -l``
prints them. An armored signature is parsed with ``sshsig`` and its signature verified with
``cryptography``; nothing here does signature arithmetic of its own.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from sshsig.binary_io import SshReader
from sshsig.sshsig import SshsigSignature, SshsigWrapper

from workflows.identity_models import NAMESPACE

KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
_ECDSA_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "ecdsa-sha2-nistp256": hashes.SHA256,
    "ecdsa-sha2-nistp384": hashes.SHA384,
    "ecdsa-sha2-nistp521": hashes.SHA512,
}
_RSA_HASH: dict[str, type[hashes.HashAlgorithm]] = {
    "rsa-sha2-256": hashes.SHA256,
    "rsa-sha2-512": hashes.SHA512,
}


@dataclass(frozen=True)
class PublicKey:
    """One OpenSSH public key: its type, wire blob and ``SHA256:`` fingerprint."""

    type: str
    blob: bytes

    @property
    def line(self) -> str:
        """The key as an ``authorized_keys`` line without its comment."""
        return f"{self.type} {base64.b64encode(self.blob).decode()}"

    @property
    def fingerprint(self) -> str:
        """The fingerprint as ``ssh-keygen -l`` prints it: ``SHA256:`` + unpadded base64."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def parse_public_key(line: str) -> PublicKey:
    """An OpenSSH public key line (``ssh-ed25519 AAAA… comment``), checked with ``cryptography``.

    Raises:
        ValueError: not a public key of a supported type (the message says which are).
    """
    parts = line.strip().split()
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise ValueError(
            f"{line.strip()[:40]!r} is not an OpenSSH public key line: write 'TYPE BASE64 "
            f"[comment]' as in authorized_keys, TYPE one of {', '.join(KEY_TYPES)}"
        )
    try:
        load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
        blob = base64.b64decode(parts[1], validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{parts[0]} key {parts[1][:16]}…: cannot be read ({exc})") from None
    if SshReader(blob).read_string().decode(errors="replace") != parts[0]:
        raise ValueError(f"{parts[0]} key {parts[1][:16]}…: its blob is of another key type")
    return PublicKey(parts[0], blob)


def _verify_raw(key: PublicKey, signature_blob: bytes, message: bytes) -> None:
    """Verify an SSH signature blob (``string algo, string sig``) with ``cryptography``.

    Raises:
        InvalidSignature: it does not verify, or its algorithm does not fit the key.
    """
    reader = SshReader(signature_blob)
    algo = reader.read_string().decode(errors="replace")
    raw = reader.read_string()
    public = load_ssh_public_key(key.line.encode())
    if isinstance(public, ed25519.Ed25519PublicKey) and algo == "ssh-ed25519":
        public.verify(raw, message)
    elif isinstance(public, rsa.RSAPublicKey) and algo in _RSA_HASH:
        public.verify(raw, message, padding.PKCS1v15(), _RSA_HASH[algo]())
    elif isinstance(public, ec.EllipticCurvePublicKey) and algo == key.type:
        pair = SshReader(raw)
        der = encode_dss_signature(pair.read_mpint(), pair.read_mpint())
        public.verify(der, message, ec.ECDSA(_ECDSA_HASH[algo]()))
    else:
        raise InvalidSignature(f"signature algorithm {algo} does not fit a {key.type} key")


@dataclass(frozen=True)
class SshsigCheck:
    """An SSHSIG parsed and checked against a message: the key that made it, or why not."""

    key: PublicKey | None
    why: str = ""


def check_sshsig(armored: str, message: bytes, *, namespace: str = NAMESPACE) -> SshsigCheck:
    """Check an armored SSHSIG (PROTOCOL.sshsig) over ``message`` in ``namespace``."""
    try:
        outer = SshsigSignature.from_armored(armored)
        key_type = SshReader(outer.public_key).read_string().decode(errors="replace")
    except (ValueError, NotImplementedError, UnicodeDecodeError) as exc:
        return SshsigCheck(None, f"forged: the SSH signature cannot be read ({exc})")
    if outer.namespace != namespace.encode():
        return SshsigCheck(
            None,
            f"wrong namespace: signed in namespace {outer.namespace.decode(errors='replace')!r}; "
            f"sign with ssh-keygen -Y sign -n {namespace}",
        )
    algo = outer.hash_algo.decode(errors="replace")
    if algo not in ("sha256", "sha512"):
        return SshsigCheck(None, f"forged: unsupported SSHSIG hash {algo!r}")
    if key_type not in KEY_TYPES:
        return SshsigCheck(None, f"forged: unsupported key type {key_type!r}")
    key = PublicKey(key_type, bytes(outer.public_key))
    signed = SshsigWrapper(
        namespace=namespace.encode(),
        hash_algo=outer.hash_algo,
        hash=hashlib.new(algo, message).digest(),
    ).to_bytes()
    try:
        _verify_raw(key, outer.signature, signed)
    except (InvalidSignature, ValueError) as exc:
        detail = f" ({exc})" if str(exc) else ""
        return SshsigCheck(
            None,
            f"forged: the SSH signature by {key.fingerprint} does not verify over this "
            f"document{detail}",
        )
    return SshsigCheck(key)
