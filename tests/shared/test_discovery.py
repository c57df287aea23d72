"""Tests for shared.discovery: the issuer and the provider metadata document."""

from __future__ import annotations

import pytest

from shared.discovery import (
    discovery_document,
    first_segment,
    issuer_path,
    origin,
    resolve_issuer,
    routed_paths,
)
from shared.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("host", "issuer"),
    [
        ("token.example.com", "https://token.example.com"),
        ("Token.Example.COM", "https://token.example.com"),
        ("token.example.com:8443", "https://token.example.com:8443"),
        ("127.0.0.1:8080", "https://127.0.0.1:8080"),
        ("[::1]:8443", "https://[::1]:8443"),
        (" token.example.com ", "https://token.example.com"),
    ],
)
def test_issuer_from_host(host: str, issuer: str) -> None:
    assert resolve_issuer(None, host) == issuer


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "token.example.com/path",
        "user@token.example.com",
        "token.example.com:port",
        "-bad.example.com",
        "token.example.com\x00",
        "tökén.example.com",
        "a,b",
    ],
)
def test_bad_host_rejected(host: str | None) -> None:
    with pytest.raises(InvalidRequestError):
        resolve_issuer(None, host)


def test_configured_issuer_wins() -> None:
    issuer = resolve_issuer("https://token.example.com", "attacker.example.com")
    assert issuer == "https://token.example.com"


@pytest.mark.parametrize(
    ("issuer", "path", "issuer_origin"),
    [
        ("https://token.example.com", "", "https://token.example.com"),
        (
            "https://token.example.com/metadata",
            "/metadata",
            "https://token.example.com",
        ),
        (
            "https://token.example.com:8443/a/b",
            "/a/b",
            "https://token.example.com:8443",
        ),
    ],
)
def test_issuer_path_and_origin(issuer: str, path: str, issuer_origin: str) -> None:
    assert issuer_path(issuer) == path
    assert origin(issuer) == issuer_origin


def test_discovery_document_fields() -> None:
    issuer = "https://token.example.com/metadata"
    document = discovery_document(issuer, issuer + "/jwks", ("RS256",))
    assert document["issuer"] == issuer
    assert document["token_endpoint"] == "https://token.example.com/token"
    assert document["authorization_endpoint"] == document["token_endpoint"]
    assert document["jwks_uri"] == issuer + "/jwks"
    assert document["response_types_supported"] == ["id_token"]
    assert document["subject_types_supported"] == ["public"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]
    assert document["grant_types_supported"] == ["client_credentials"]
    assert document["token_endpoint_auth_methods_supported"] == ["tls_client_auth"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", ""),
        ("", ""),
        ("/metadata", "/metadata"),
        ("/metadata/.well-known/openid-configuration", "/metadata"),
    ],
)
def test_first_segment(path: str, expected: str) -> None:
    assert first_segment(path) == expected


@pytest.mark.parametrize(
    ("path", "segment", "expected"),
    [
        ("/token", "/token", ("/token",)),
        ("/", "/token", ("/", "/token")),
        ("/token/", "/token", ("/token/",)),
        ("/tokens", "/token", ("/tokens", "/token/tokens")),
        ("/jwks", "/metadata", ("/jwks", "/metadata/jwks")),
        ("/metadata/jwks", "/metadata", ("/metadata/jwks",)),
        ("/jwks", "", ("/jwks",)),
    ],
)
def test_routed_paths(path: str, segment: str, expected: tuple[str, ...]) -> None:
    assert routed_paths(path, segment) == expected
