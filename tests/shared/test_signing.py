"""Tests for shared.signing: local PEM keys, key rotation and the JWKS."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import jwt
import pytest

from shared.config import ConfigurationError
from shared.signing import LocalKeySigner, jwk_thumbprint, load_signing_key
from shared.upstream import Deadline

PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")
CLAIMS = {"iss": "https://token.example.com", "sub": "client-1", "aud": "x"}


@pytest.mark.parametrize(
    ("name", "algorithm", "kty"),
    [("rsa2048", "RS256", "RSA"), ("ec_p256", "ES256", "EC")],
)
def test_supported_key_loads(
    key_files: dict[str, Path], name: str, algorithm: str, kty: str
) -> None:
    key = load_signing_key(key_files[name])
    assert key.algorithm == algorithm
    assert key.public_jwk["kty"] == kty
    assert key.public_jwk["kid"] == key.kid
    assert key.public_jwk["alg"] == algorithm


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("rsa1024", "1024-bit"),
        ("ec_p384", "unsupported key type"),
        ("ed25519", "unsupported key type"),
        ("encrypted", "unencrypted PEM private key"),
        ("public_only", "unencrypted PEM private key"),
        ("garbage", "unencrypted PEM private key"),
    ],
)
def test_unsupported_key_rejected(
    key_files: dict[str, Path], name: str, message: str
) -> None:
    path = key_files[name]
    with pytest.raises(ConfigurationError) as caught:
        load_signing_key(path)
    assert caught.value.variable == "SIGNING_KEY_FILE"
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_key_error_hides_contents(key_files: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_signing_key(key_files["garbage"])
    assert "bm90IGEga2V5" not in str(caught.value)


def test_last_key_signs(key_files: dict[str, Path]) -> None:
    signer = LocalKeySigner.from_files([key_files["rsa2048"], key_files["ec_p256"]])
    token = signer.sign(CLAIMS, Deadline(1))
    header = jwt.get_unverified_header(token)
    assert header["kid"] == load_signing_key(key_files["ec_p256"]).kid
    assert header["alg"] == "ES256"


def test_jwks_lists_every_key(key_files: dict[str, Path]) -> None:
    paths = [key_files["rsa2048"], key_files["rsa2048_next"], key_files["ec_p256"]]
    jwks = LocalKeySigner.from_files(paths).public_jwks()
    kids = [key["kid"] for key in jwks["keys"]]
    assert kids == [load_signing_key(path).kid for path in paths]


def test_jwks_has_no_private_members(key_files: dict[str, Path]) -> None:
    signer = LocalKeySigner.from_files([key_files["rsa2048"], key_files["ec_p256"]])
    for key in signer.public_jwks()["keys"]:
        for member in PRIVATE_MEMBERS:
            assert member not in key


def test_algorithms_listed_once(key_files: dict[str, Path]) -> None:
    signer = LocalKeySigner.from_files(
        [key_files["rsa2048"], key_files["rsa2048_next"], key_files["ec_p256"]]
    )
    assert signer.algorithms == ("RS256", "ES256")


@pytest.mark.parametrize("name", ["rsa2048", "ec_p256"])
def test_token_verifies_with_jwks(key_files: dict[str, Path], name: str) -> None:
    signer = LocalKeySigner.from_files([key_files[name]])
    token = signer.sign(CLAIMS, Deadline(1))
    keys = jwt.PyJWKSet.from_dict(signer.public_jwks())
    key = keys[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(token, key, algorithms=["RS256", "ES256"], audience="x")
    assert claims == CLAIMS


def test_no_keys_rejected() -> None:
    with pytest.raises(ValueError, match="at least one"):
        LocalKeySigner([])


def test_thumbprint_rfc7638_example() -> None:
    # RFC 7638 §3.1: the example RSA key and its thumbprint.
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aP"
        "FFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93l"
        "qt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu"
        "6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksIN"
        "HaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_kid_is_key_thumbprint(key_files: dict[str, Path]) -> None:
    key = load_signing_key(key_files["ec_p256"])
    members = {name: key.public_jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    assert key.kid == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_inconsistent_rsa_key_rejected(tmp_path: Path) -> None:
    # A private exponent that does not match the public key signs nothing
    # that verifies; the load-time test signature catches it.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = good.private_numbers()
    broken = rsa.RSAPrivateNumbers(
        p=numbers.p,
        q=numbers.q,
        d=numbers.d ^ 2,
        dmp1=numbers.dmp1 ^ 2,
        dmq1=numbers.dmq1 ^ 2,
        iqmp=numbers.iqmp,
        public_numbers=numbers.public_numbers,
    ).private_key(unsafe_skip_rsa_key_validation=True)
    path = tmp_path / "broken.pem"
    path.write_bytes(
        broken.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    with pytest.raises(ConfigurationError, match="not a consistent RSA key"):
        load_signing_key(path)
