"""Signers for ID tokens: a local key, or IAM Credentials ``signJwt``.

Both implement ``Signer``, so the token flow does not depend on where the
key lives. A local key is loaded and parsed once, at cold start: parsing a
PEM key costs about a hundred times more than one RS256 signature.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from shared.config import SIGNING_KEY_FILE, ConfigurationError
from shared.upstream import Deadline

MIN_RSA_KEY_BITS = 2048


class Signer(Protocol):
    """Signs ID token claims into a compact JWS."""

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The JWS algorithms of the signatures, for discovery metadata."""
        ...

    def sign(self, claims: Mapping[str, Any], deadline: Deadline) -> str:
        """Return the signed JWT for ``claims``."""
        ...

    def public_jwks(self) -> dict[str, Any] | None:
        """Return the JWKS that the metadata function serves, if any."""
        ...

    @property
    def published_jwks_uri(self) -> str | None:
        """Where the public keys are published, or None when served here."""
        ...


@dataclass(frozen=True)
class SigningKey:
    """A parsed private key with its algorithm, key ID and public JWK."""

    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    algorithm: str
    kid: str
    public_jwk: Mapping[str, str]


class LocalKeySigner:
    """Signs with private keys from files; the last key listed signs.

    Every key is published in the JWKS, so a retired key keeps verifying the
    tokens it signed while it stays listed.
    """

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise ValueError("at least one signing key is required")
        self._keys = tuple(keys)
        self._active = self._keys[-1]
        self._jwks = {"keys": [dict(key.public_jwk) for key in self._keys]}

    @classmethod
    def from_files(cls, paths: Sequence[Path]) -> LocalKeySigner:
        """Load and check every key file.

        Raises:
            ConfigurationError: A file is not a supported private key.
        """
        return cls([load_signing_key(path) for path in paths])

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(key.algorithm for key in self._keys))

    @property
    def active_kid(self) -> str:
        """Key ID of the key that signs new tokens."""
        return self._active.kid

    def sign(self, claims: Mapping[str, Any], deadline: Deadline) -> str:
        del deadline  # Local signing does not wait on anything.
        return jwt.encode(
            dict(claims),
            self._active.private_key,
            algorithm=self._active.algorithm,
            headers={"kid": self._active.kid, "typ": "JWT"},
        )

    def public_jwks(self) -> dict[str, Any]:
        return self._jwks

    @property
    def published_jwks_uri(self) -> None:
        return None


def load_signing_key(path: Path) -> SigningKey:
    """Parse a PEM private key: RSA of 2048 bits or more, or EC P-256.

    Raises:
        ConfigurationError: The file is unreadable, encrypted or unsupported.
    """
    try:
        # OpenSSL's full RSA key check costs about 33 ms, a tenth of a cold
        # start. It is skipped, and _check_rsa_key signs and verifies one
        # message instead, which catches a private key that does not match
        # its public key. OpenSSL itself recomputes a CRT result that fails
        # its own check (rsa_ossl_mod_exp, seen with cryptography 50), so
        # faulty CRT parameters cannot leak the key.
        key = serialization.load_pem_private_key(
            path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (OSError, ValueError, TypeError) as error:
        raise ConfigurationError(
            SIGNING_KEY_FILE,
            f"cannot load {str(path)!r} as an unencrypted PEM private key "
            f"({type(error).__name__}); generate one with: openssl genpkey "
            "-algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out signing-key.pem",
        ) from None

    if isinstance(key, rsa.RSAPrivateKey):
        _check_rsa_key(key, path)
        if key.key_size < MIN_RSA_KEY_BITS:
            raise ConfigurationError(
                SIGNING_KEY_FILE,
                f"{str(path)!r} is a {key.key_size}-bit RSA key; use "
                f"{MIN_RSA_KEY_BITS} bits or more.",
            )
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        return _signing_key(key, "RS256", jwk)
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(
        key.curve, ec.SECP256R1
    ):
        jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
        return _signing_key(key, "ES256", jwk)
    raise ConfigurationError(
        SIGNING_KEY_FILE,
        f"{str(path)!r} holds an unsupported key type; use RSA (2048 bits or "
        "more) or EC P-256, the algorithms that Workload Identity Federation "
        "accepts (RS256, ES256).",
    )


def _check_rsa_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    message = b"token-service signing key check"
    try:
        signature = key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        raise ConfigurationError(
            SIGNING_KEY_FILE,
            f"{str(path)!r} is not a consistent RSA key: a test signature does "
            "not verify; generate a new key.",
        ) from None


def _signing_key(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    algorithm: str,
    jwk: dict[str, str],
) -> SigningKey:
    kid = jwk_thumbprint(jwk)
    # PyJWT adds key_ops, which RFC 7517 §4.3 advises against combining with use.
    jwk.pop("key_ops", None)
    public = {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}
    return SigningKey(key, algorithm, kid, public)


# PyJWT 2.15 has no RFC 7638 thumbprint helper, and the computation is a
# hash over the key's required members.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}


def jwk_thumbprint(jwk: Mapping[str, str]) -> str:
    """Return the RFC 7638 SHA-256 thumbprint of a public JWK, base64url."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
