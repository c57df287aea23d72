"""One persistent RSA-2048 signing key per emulated service account.

Keys live in ``<state-dir>/iam-credentials/<email>.pem`` (PKCS #8, mode 0600),
so a restarted emulator signs with the same key and old JWTs still verify.
The key ID is the SHA-1 of the DER public key: 40 lowercase hex characters,
the shape of Google's key IDs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from deploy.local.emulators.state_files import read_or_create

KEY_DIRECTORY = "iam-credentials"
# Letters, digits and . _ % + - before the @: safe as a file name.
_EMAIL = re.compile(r"^[a-z0-9._%+-]+@[a-z0-9-]+(\.[a-z0-9-]+)+$")


@dataclass(frozen=True)
class SigningKey:
    """A service account's private key and its key ID."""

    key_id: str
    private_key: rsa.RSAPrivateKey

    def public_jwk(self) -> dict[str, Any]:
        """Return the public key as a JWK, as Google's JWKS endpoint lists it."""
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(
            self.private_key.public_key(), as_dict=True
        )
        # PyJWT adds key_ops, which RFC 7517 §4.3 says not to combine with
        # use; Google's JWKS has only use.
        jwk.pop("key_ops", None)
        jwk.update({"alg": "RS256", "use": "sig", "kid": self.key_id})
        return jwk


def normalize_email(email: str) -> str:
    """Lowercase ``email`` and check that it is a plain address.

    Raises:
        ValueError: the value is not an email address.
    """
    normalized = email.strip().lower()
    if not _EMAIL.match(normalized):
        raise ValueError(f"invalid service account email {email!r}")
    return normalized


def _generate_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_signing_key(state_dir: Path, email: str) -> SigningKey:
    """Load the key of ``email`` from ``state_dir``, creating it if absent.

    Raises:
        ValueError: the key file does not hold an RSA private key.
    """
    path = state_dir / KEY_DIRECTORY / f"{normalize_email(email)}.pem"
    pem = read_or_create(path, _generate_pem)
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    public_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # SHA-1 only derives a stable identifier here; it protects nothing.
    key_id = hashlib.sha1(public_der, usedforsecurity=False).hexdigest()
    return SigningKey(key_id, key)
