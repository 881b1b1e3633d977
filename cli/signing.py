"""Signing at the edge: ``--sign`` through the user's own ``ssh-keygen``, or ``--oidc-token``.

``ssh-keygen -Y sign -n changeguard -f KEY`` signs the document's canonical bytes: KEY is a private
key file, or a public key file whose private half is in ssh-agent (hardware keys included). Nothing
here touches a private key itself. docs/approvals.md shows the whole flow.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel

from cli import exitcodes
from cli.exitcodes import fail
from cli.render import print_json
from workflows.identity_models import (
    NAMESPACE,
    Signature,
    SignedDocument,
    canonical_bytes,
    document_digest,
    parse_stamp,
    utc_stamp,
)

KEY_ENV = "CHANGEGUARD_SIGNING_KEY"
DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


class SigningError(Exception):
    """Signing is impossible as asked (no key, ssh-keygen failed, a token file is missing)."""


def add_arguments(s: argparse.ArgumentParser, *, what: str) -> None:
    """The signing flags every signable command takes."""
    g = s.add_argument_group("verified identity (docs/approvals.md)")
    g.add_argument(
        "--sign", action="store_true", help=f"sign the {what} with ssh-keygen -Y sign (SSHSIG)"
    )
    g.add_argument(
        "--key",
        default=None,
        help=f"the key ssh-keygen signs with: a private key, or a public key held by ssh-agent "
        f"(default: ${KEY_ENV}, else ~/.ssh/id_ed25519, id_ecdsa or id_rsa)",
    )
    g.add_argument(
        "--oidc-token", default=None, help="attach this ID token file (its nonce: --print-nonce)"
    )
    g.add_argument(
        "--expires-at",
        default=None,
        help="when the signature stops counting, UTC as 2026-12-01T13:00:00Z (default: soon)",
    )
    g.add_argument(
        "--print-nonce",
        action="store_true",
        help="print the document's digest (the ID token's nonce) and exit; needs --expires-at",
    )
    g.add_argument(
        "--print-json",
        action="store_true",
        help="print the (signed) payload as JSON instead of sending it (for the Web UI)",
    )


def expiry(args: argparse.Namespace, default: timedelta) -> str:
    """The signature's expiry: ``--expires-at``, else now + ``default``.

    Raises:
        SigningError: ``--expires-at`` is not UTC in whole seconds.
    """
    if args.expires_at:
        try:
            return utc_stamp(parse_stamp(args.expires_at))
        except ValueError:
            raise SigningError(
                f"--expires-at {args.expires_at!r}: write UTC in whole seconds, e.g. "
                "2026-12-01T13:00:00Z"
            ) from None
    if args.print_nonce or args.oidc_token:
        raise SigningError(
            "--expires-at is required with --print-nonce and --oidc-token: the nonce covers it"
        )
    return utc_stamp(datetime.now(UTC) + default)


def wants_signature(args: argparse.Namespace) -> bool:
    """Whether the command was asked to sign (or to print a nonce)."""
    return bool(args.sign or args.oidc_token or args.print_nonce)


def signing_key(explicit: str | None) -> Path:
    """The key file ``ssh-keygen`` signs with.

    Raises:
        SigningError: none is given and none of the default keys exists.
    """
    if explicit or os.environ.get(KEY_ENV):
        return Path(explicit or os.environ[KEY_ENV]).expanduser()
    for name in DEFAULT_KEYS:
        path = Path.home() / ".ssh" / name
        if path.exists():
            return path
    raise SigningError(
        f"no signing key: pass --key PATH (a private key, or the public key of one in ssh-agent) "
        f"or set {KEY_ENV}"
    )


def ssh_sign(document: SignedDocument, key: Path) -> str:
    """The armored SSHSIG of the document, made by ``ssh-keygen -Y sign -n changeguard``.

    Raises:
        SigningError: ssh-keygen is missing or refused (its message is included).
    """
    try:
        done = subprocess.run(
            ["ssh-keygen", "-Y", "sign", "-n", NAMESPACE, "-f", str(key)],
            input=canonical_bytes(document),
            capture_output=True,
            timeout=120,  # a hardware key waits for a touch
            check=False,
        )
    except FileNotFoundError:
        raise SigningError(
            "ssh-keygen is not installed (Debian: apt-get install openssh-client)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SigningError("ssh-keygen did not finish signing within 120 s") from None
    if done.returncode != 0 or b"BEGIN SSH SIGNATURE" not in done.stdout:
        message = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        raise SigningError(f"ssh-keygen -Y sign -f {key} failed: {message}")
    return done.stdout.decode()


def signature_for(document: SignedDocument, args: argparse.Namespace) -> Signature:
    """Sign the document as the flags say: ``--oidc-token FILE`` or ``--sign [--key PATH]``.

    Raises:
        SigningError: the token file cannot be read, or ssh-keygen cannot sign.
    """
    if args.oidc_token:
        try:
            token = Path(args.oidc_token).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SigningError(f"--oidc-token {args.oidc_token}: {exc}") from None
        return Signature(document=document, oidc_token=token)
    return Signature(document=document, sshsig=ssh_sign(document, signing_key(args.key)))


@dataclasses.dataclass
class Signed:
    """What :func:`signed` made: the signature to attach, or ``None`` for an unsigned payload."""

    signature: Signature | None = None


def signed(
    args: argparse.Namespace,
    document: Callable[[str], SignedDocument],
    default_expiry: timedelta,
) -> Signed | None:
    """Sign what the flags ask for; ``None`` after printing why signing failed (exit 2).

    With ``--print-nonce`` the document's digest (an ID token's nonce) is printed instead.

    Args:
        args: the command's flags (:func:`add_arguments`).
        document: the document to sign, given its expiry stamp.
        default_expiry: how long a signature holds without ``--expires-at``.
    """
    if not wants_signature(args):
        return Signed()
    try:
        doc = document(expiry(args, default_expiry))
        if args.print_nonce:
            print(document_digest(doc))
            return Signed()
        return Signed(signature_for(doc, args))
    except SigningError as exc:
        fail("cannot sign:", str(exc))
        return None


def sign_or_stop(
    args: argparse.Namespace,
    document: Callable[[str], SignedDocument],
    default_expiry: timedelta,
    payload: Callable[[Signature | None], BaseModel],
) -> Signed | int:
    """:func:`signed`, or the exit code when the command ends here.

    It ends when signing failed (2, the reason printed), with ``--print-nonce`` (0, the digest
    printed) and with ``--print-json`` (0, ``payload(signature)`` printed: what would be sent).
    """
    made = signed(args, document, default_expiry)
    if made is None:
        return exitcodes.INVALID
    if args.print_nonce:
        return exitcodes.OK
    if args.print_json:
        print_json(payload(made.signature).model_dump(mode="json"))
        return exitcodes.OK
    return made
