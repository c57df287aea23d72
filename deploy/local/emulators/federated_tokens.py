"""Federated access tokens that the STS emulator issues and IAM verifies.

A token is ``ya29.sts-emulator.<claims>.<mac>``: base64url JSON claims and an
HMAC-SHA256 over the prefix and claims, keyed by ``<state-dir>/federated-token-key``.
Whichever emulator starts first creates the key. The token broker must treat
these tokens as opaque, as it treats Google's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from deploy.local.emulators.state_files import read_or_create

TOKEN_PREFIX = "ya29.sts-emulator."  # noqa: S105 - a public prefix
KEY_FILE_NAME = "federated-token-key"
KEY_BYTES = 32


class InvalidFederatedTokenError(ValueError):
    """The value is not a valid, unexpired token of this STS emulator."""


class ExpiredFederatedTokenError(InvalidFederatedTokenError):
    """The token is genuine but has expired."""


@dataclass(frozen=True)
class FederatedToken:
    """The claims a federated token carries."""

    subject: str
    scopes: tuple[str, ...]
    audience: str
    issued_at: int
    expires_at: int


def load_key(state_dir: Path) -> bytes:
    """Read the shared HMAC key, creating it if no emulator has yet.

    Raises:
        ValueError: the key file exists but does not hold a key.
    """
    path = state_dir / KEY_FILE_NAME
    key = read_or_create(path, lambda: secrets.token_bytes(KEY_BYTES))
    if len(key) != KEY_BYTES:
        raise ValueError(
            f"invalid key file {path}: it contains {len(key)} bytes, not "
            f"{KEY_BYTES}; delete it and restart the emulators"
        )
    return key


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed_part: str) -> str:
    return _b64encode(hmac.new(key, signed_part.encode(), hashlib.sha256).digest())


def encode(key: bytes, token: FederatedToken) -> str:
    """Serialize and sign ``token``."""
    claims = {
        "sub": token.subject,
        "scope": list(token.scopes),
        "aud": token.audience,
        "iat": token.issued_at,
        "exp": token.expires_at,
        # A nonce keeps two tokens minted in the same second distinct.
        "jti": secrets.token_hex(8),
    }
    signed_part = TOKEN_PREFIX + _b64encode(json.dumps(claims).encode())
    return f"{signed_part}.{_mac(key, signed_part)}"


def decode(key: bytes, value: str, now: float) -> FederatedToken:
    """Verify ``value`` and return its claims.

    Raises:
        ExpiredFederatedTokenError: the token is genuine but has expired.
        InvalidFederatedTokenError: the prefix, MAC or claims are wrong.
    """
    if not value.startswith(TOKEN_PREFIX):
        raise InvalidFederatedTokenError("not a token of the STS emulator")
    signed_part, _, mac = value.rpartition(".")
    if not hmac.compare_digest(mac.encode(), _mac(key, signed_part).encode()):
        raise InvalidFederatedTokenError("the token's MAC does not match")
    try:
        claims = json.loads(_b64decode(signed_part[len(TOKEN_PREFIX) :]))
        token = FederatedToken(
            subject=str(claims["sub"]),
            scopes=tuple(str(scope) for scope in claims["scope"]),
            audience=str(claims["aud"]),
            issued_at=int(claims["iat"]),
            expires_at=int(claims["exp"]),
        )
    except (binascii.Error, ValueError, KeyError, TypeError) as error:
        raise InvalidFederatedTokenError("the token's claims are malformed") from error
    if token.expires_at <= now:
        raise ExpiredFederatedTokenError("the token has expired")
    return token
