"""Tests for shared.leaf_cert: RFC 9440 headers, DER names and chain checks."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from deploy.local import gateway, pki
from shared import lb_headers
from shared.client_cert import ClientCertificate, apply_leaf
from shared.config import HeaderNames
from shared.leaf_cert import (
    ChainVerifier,
    describe_leaf,
    format_serial_number,
    load_der_name,
    parse_byte_sequence,
    parse_chain_header,
    parse_dn_header,
    parse_leaf_header,
    sha256_fingerprint,
)
from tests.policy.conftest import Mint, utc_now


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def item(certificate: x509.Certificate) -> str:
    return ":" + base64.b64encode(der(certificate)).decode() + ":"


# --- Byte sequences ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (":aGVsbG8=:", b"hello"),
        (":aGVsbG8:", b"hello"),  # RFC 8941 parsers may accept missing padding
        ("  :aGk=:  ", b"hi"),  # surrounding whitespace
    ],
)
def test_byte_sequence_decoded(value: str, expected: bytes) -> None:
    assert parse_byte_sequence(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("aGVsbG8=", id="no-colons"),
        pytest.param(":aGVsbG8=", id="one-colon"),
        pytest.param("::", id="empty"),
        pytest.param(":aGV-bG8_:", id="base64url"),
        pytest.param(":aGVs bG8=:", id="inner-space"),
        pytest.param(":aGVsbG8===:", id="triple-padding"),
        pytest.param(":a:", id="truncated"),
    ],
)
def test_bad_byte_sequence_rejected(value: str) -> None:
    assert parse_byte_sequence(value) is None


def test_leaf_header_parsed(mint: Mint) -> None:
    issued = mint("leaf")
    assert parse_leaf_header(item(issued.certificate)) == issued.certificate


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(
            ":" + base64.b64encode(b"not a certificate").decode() + ":", id="not-der"
        ),
        pytest.param("-----BEGIN CERTIFICATE-----", id="pem"),
    ],
)
def test_bad_leaf_header_rejected(value: str) -> None:
    assert parse_leaf_header(value) is None


def test_oversized_leaf_rejected(mint: Mint) -> None:
    issued = mint("big", dns_names=[f"host-{i}.example.com" for i in range(900)])
    assert len(der(issued.certificate)) > 16 * 1024
    assert parse_leaf_header(item(issued.certificate)) is None


@pytest.mark.parametrize("separator", [",", ", "])
def test_chain_header_parsed(
    demo_ca: pki.IssuedCertificate, other_ca: pki.IssuedCertificate, separator: str
) -> None:
    value = separator.join([item(demo_ca.certificate), item(other_ca.certificate)])
    assert parse_chain_header(value) == (demo_ca.certificate, other_ca.certificate)


def test_chain_with_bad_item_rejected(demo_ca: pki.IssuedCertificate) -> None:
    assert parse_chain_header(item(demo_ca.certificate) + ",:AAAA:") is None


def test_chain_over_ten_rejected(demo_ca: pki.IssuedCertificate) -> None:
    assert parse_chain_header(",".join([item(demo_ca.certificate)] * 11)) is None


# --- Names -------------------------------------------------------------------


def test_der_name_round_trip() -> None:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
            x509.NameAttribute(NameOID.COMMON_NAME, "device-1"),
        ]
    )
    parsed = load_der_name(name.public_bytes())
    assert parsed == name
    assert parsed is not None
    assert parsed.rfc4514_string() == "CN=device-1,O=Example\\, Inc."


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x30\x03\x02\x01\x01", id="not-a-name"),
        pytest.param(b"\x30\x00\x00", id="trailing-byte"),
    ],
)
def test_bad_der_name_rejected(data: bytes) -> None:
    assert load_der_name(data) is None


def test_dn_header_parsed(mint: Mint) -> None:
    cert = mint("dn", organization="Example").certificate
    encoded = base64.b64encode(cert.subject.public_bytes()).decode()
    assert parse_dn_header(encoded) == cert.subject
    assert parse_dn_header("not base64!") is None


# --- Facts of a leaf ---------------------------------------------------------


def test_leaf_facts_match_lb_headers(mint: Mint) -> None:
    cert = mint(
        "facts",
        uris=("https://devices.example.com/facts",),
        dns_names=("facts.example.com", "facts.internal.example.com"),
    ).certificate
    headers = gateway.describe_client_certificate(
        cert, [], gateway.client_policy_builder([cert]), "per-entry", [der(cert)]
    )
    facts = describe_leaf(cert)
    assert facts.sha256_fingerprint == headers["sha256_fingerprint"]
    assert facts.serial_number == headers["serial_number"]
    assert facts.spiffe_id == headers["spiffe_id"]
    assert facts.uri_sans == ("https://devices.example.com/facts",)
    assert facts.dns_sans == ("facts.example.com", "facts.internal.example.com")
    assert facts.not_after.isoformat() == headers["valid_not_after"]
    assert facts.subject == cert.subject


def test_two_spiffe_ids_give_none(mint: Mint) -> None:
    cert = mint("twice", uris=("spiffe://demo.example.com/device/other",)).certificate
    facts = describe_leaf(cert)
    assert facts.spiffe_id == ""
    assert facts.uri_sans == ()


@pytest.mark.parametrize(
    ("serial", "text"),
    [
        (0x7F, "7f"),
        (0x80, "00:80"),  # the sign bit needs a leading zero byte
        (0xAD3E, "00:ad:3e"),
        (1, "01"),
    ],
)
def test_serial_number_format(serial: int, text: str) -> None:
    assert format_serial_number(serial) == text


def test_fingerprint_unpadded(mint: Mint) -> None:
    assert len(sha256_fingerprint(mint("fp").certificate)) == 43


# --- Chain verification ------------------------------------------------------


@pytest.fixture(scope="module")
def intermediate(demo_ca: pki.IssuedCertificate) -> pki.IssuedCertificate:
    return pki.create_intermediate_authority(demo_ca, "policy tests issuing CA")


def test_chain_through_intermediate_verifies(
    demo_ca: pki.IssuedCertificate, intermediate: pki.IssuedCertificate, mint: Mint
) -> None:
    leaf = mint("via-intermediate", ca=intermediate).certificate
    verifier = ChainVerifier([demo_ca.certificate])
    assert verifier.verify(leaf, [intermediate.certificate], utc_now()) is None


def test_missing_intermediate_fails(
    demo_ca: pki.IssuedCertificate, intermediate: pki.IssuedCertificate, mint: Mint
) -> None:
    leaf = mint("orphan", ca=intermediate).certificate
    assert ChainVerifier([demo_ca.certificate]).verify(leaf, [], utc_now())


def test_unknown_ca_fails(
    demo_ca: pki.IssuedCertificate, other_ca: pki.IssuedCertificate, mint: Mint
) -> None:
    leaf = mint("stranger", ca=other_ca).certificate
    assert ChainVerifier([demo_ca.certificate]).verify(leaf, [], utc_now())


@pytest.mark.parametrize(
    "usage",
    [
        pytest.param(None, id="no-eku"),
        pytest.param((ExtendedKeyUsageOID.SERVER_AUTH,), id="server-auth-only"),
    ],
)
def test_eku_client_auth_required(
    demo_ca: pki.IssuedCertificate,
    mint: Mint,
    usage: tuple[x509.ObjectIdentifier] | None,
) -> None:
    leaf = mint("no-client-auth", extended_key_usage=usage).certificate
    assert ChainVerifier([demo_ca.certificate]).verify(leaf, [], utc_now())


def test_leaf_without_san_verifies(demo_ca: pki.IssuedCertificate, mint: Mint) -> None:
    leaf = mint("no-san", spiffe_id=None, dns_names=()).certificate
    assert ChainVerifier([demo_ca.certificate]).verify(leaf, [], utc_now()) is None


def test_leaf_within_skew_verifies(demo_ca: pki.IssuedCertificate, mint: Mint) -> None:
    now = utc_now()
    leaf = mint(
        "just-expired",
        not_before=now - datetime.timedelta(minutes=2),
        not_after=now - datetime.timedelta(seconds=30),
    ).certificate
    # Verified at its notAfter, so check_validity alone judges the skew.
    assert ChainVerifier([demo_ca.certificate]).verify(leaf, [], now) is None


def test_leaf_with_malformed_san_rejected(demo_ca: pki.IssuedCertificate) -> None:
    # cryptography parses extensions lazily; the header parser must not.
    san = x509.UnrecognizedExtension(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, bytes.fromhex("30058703010203")
    )
    issued = pki.issue_client_certificate(
        demo_ca.certificate, demo_ca.private_key, common_name="bad-san", spiffe_id=None
    )
    now = utc_now()
    malformed = (
        x509.CertificateBuilder()
        .subject_name(issued.certificate.subject)
        .issuer_name(demo_ca.certificate.subject)
        .public_key(issued.private_key.public_key())
        .serial_number(pki.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .sign(demo_ca.private_key, hashes.SHA256())
    )
    assert parse_leaf_header(item(malformed)) is None


def test_leaf_san_with_comma_dropped(
    demo_ca: pki.IssuedCertificate, mint: Mint
) -> None:
    leaf = mint("comma", uris=("https://a.example.com/x,y",)).certificate
    cert = ClientCertificate(
        present=True,
        chain_verified=True,
        sha256_fingerprint=sha256_fingerprint(leaf),
        leaf=leaf,
    )
    names = HeaderNames(
        lb_headers.header_names(), "spiffe_id", {"leaf": "X-Client-Cert-Leaf"}
    )
    resolved = apply_leaf(cert, names, None, utc_now())
    assert resolved.uri_sans == ()
    assert resolved.spiffe_id == "spiffe://demo.example.com/device/comma"
    assert resolved.problems == ("X-Client-Cert-Leaf",)
