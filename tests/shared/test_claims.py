"""Tests for shared.claims: the claims of issued ID tokens."""

from __future__ import annotations

from typing import Any

from shared.claims import IdTokenRequest, build_id_token_claims
from shared.client_cert import ClientCertificate
from tests.conftest import (
    CLIENT_DNS_SANS,
    CLIENT_SPIFFE_ID,
    CLIENT_URI_SANS,
    ISSUER,
    LB_FINGERPRINT,
    LB_SERIAL,
    TOKEN_AUDIENCE,
    XLB_MTLS_FLOW,
)

FULL_CERTIFICATE = ClientCertificate(
    present=True,
    chain_verified=True,
    sha256_fingerprint=LB_FINGERPRINT,
    serial_number=LB_SERIAL,
    spiffe_id=CLIENT_SPIFFE_ID,
    uri_sans=CLIENT_URI_SANS,
    dns_sans=CLIENT_DNS_SANS,
)


def claims_for(
    cert: ClientCertificate, issued_at: int = 1_700_000_000
) -> dict[str, Any]:
    return build_id_token_claims(
        IdTokenRequest(
            issuer=ISSUER,
            audience=TOKEN_AUDIENCE,
            client_id="client-1",
            certificate=cert,
            issued_at=issued_at,
            lifetime_seconds=300,
        )
    )


def test_standard_claims_set() -> None:
    claims = claims_for(FULL_CERTIFICATE)
    assert claims["iss"] == ISSUER
    assert claims["aud"] == TOKEN_AUDIENCE
    assert claims["sub"] == "client-1"
    assert claims["client_id"] == "client-1"
    assert claims["iat"] == 1_700_000_000
    assert claims["exp"] == 1_700_000_300
    assert claims["amr"] == [XLB_MTLS_FLOW]


def test_client_claim_first_sans() -> None:
    assert claims_for(FULL_CERTIFICATE)["client"] == {
        "x5_spiffe": CLIENT_SPIFFE_ID,
        "x5_dnssan": CLIENT_DNS_SANS[0],
        "x5_urisan": CLIENT_URI_SANS[0],
        "x5_sha256": LB_FINGERPRINT,
        "x5_serial": LB_SERIAL,
        "x5_dnssans": list(CLIENT_DNS_SANS),
        "x5_urisans": list(CLIENT_URI_SANS),
    }


def test_absent_facts_empty_strings() -> None:
    client = claims_for(ClientCertificate(present=True, chain_verified=True))["client"]
    assert client == {
        **dict.fromkeys(
            ("x5_spiffe", "x5_dnssan", "x5_urisan", "x5_sha256", "x5_serial"), ""
        ),
        "x5_dnssans": [],
        "x5_urisans": [],
    }


def test_jti_unique_per_token() -> None:
    jtis = {claims_for(FULL_CERTIFICATE)["jti"] for _ in range(20)}
    assert len(jtis) == 20
