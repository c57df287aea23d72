"""Tests for shared.revocation: policy lists, CRL issuers and serial formats."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from deploy.local import pki
from shared.client_cert import ClientCertificate
from shared.config import ConfigurationError
from shared.errors import InvalidClientError
from shared.leaf_cert import format_serial_number
from shared.revocation import RevocationLists, RevokedCertificates, serial_number_value
from tests.policy.conftest import utc_now


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("01", 1),
        ("00:80", 0x80),
        ("00:ad:3e", 0xAD3E),
        ("ff", -1),  # DER INTEGER content is two's complement
        ("", None),
        ("zz", None),
    ],
)
def test_serial_number_value(text: str, value: int | None) -> None:
    assert serial_number_value(text) == value


@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xAD3E, pki.random_serial_number()])
def test_serial_round_trip(serial: int) -> None:
    assert serial_number_value(format_serial_number(serial)) == serial


def cert_of(issuer: x509.Name | None, serial: int | None) -> ClientCertificate:
    return ClientCertificate(
        present=True,
        chain_verified=True,
        issuer=issuer,
        serial_number="" if serial is None else format_serial_number(serial),
    )


def test_revoked_serial_by_issuer(
    demo_ca: pki.IssuedCertificate, other_ca: pki.IssuedCertificate
) -> None:
    lists = RevocationLists([pki.create_crl(demo_ca, [41, 42])])
    issuer = demo_ca.certificate.subject
    with pytest.raises(InvalidClientError) as caught:
        lists.check(cert_of(issuer, 42))
    assert caught.value.reason == "certificate_revoked"
    lists.check(cert_of(issuer, 43))
    lists.check(cert_of(other_ca.certificate.subject, 42))


def test_unknown_issuer_fails_closed(demo_ca: pki.IssuedCertificate) -> None:
    lists = RevocationLists([pki.create_crl(demo_ca, [])])
    with pytest.raises(InvalidClientError) as caught:
        lists.check(cert_of(None, 1))
    assert caught.value.reason == "revocation_status_unknown"


def test_unknown_serial_fails_closed(demo_ca: pki.IssuedCertificate) -> None:
    lists = RevocationLists([pki.create_crl(demo_ca, [])])
    with pytest.raises(InvalidClientError):
        lists.check(cert_of(demo_ca.certificate.subject, None))


def test_stale_crl_reported(demo_ca: pki.IssuedCertificate) -> None:
    now = utc_now()
    fresh = pki.create_crl(demo_ca, [])
    stale = pki.create_crl(
        demo_ca,
        [],
        last_update=now - datetime.timedelta(days=8),
        next_update=now - datetime.timedelta(days=1),
    )
    (report,) = RevocationLists([fresh, stale]).stale(now)
    assert report.issuer == "CN=policy tests root CA"
    assert report.next_update < now


def test_crl_signed_by_anchor_accepted(
    tmp_path: Path, demo_ca: pki.IssuedCertificate
) -> None:
    path = tmp_path / "crl.der"
    path.write_bytes(
        pki.create_crl(demo_ca, [7]).public_bytes(serialization.Encoding.DER)
    )
    lists = RevocationLists.from_file(path, [demo_ca.certificate])
    assert lists.issuers == ("CN=policy tests root CA",)


def test_empty_pem_rejected(tmp_path: Path) -> None:
    path = tmp_path / "crl.pem"
    path.write_text("-----BEGIN NOTHING-----\n")
    with pytest.raises(ConfigurationError, match="PEM or DER CRL"):
        RevocationLists.from_file(path)


@pytest.mark.parametrize(
    ("fingerprint", "serial", "source"),
    [
        (
            "om8vGt3r6eTx5TI1kCeNKRJYZTUreIbHGu+Gu8FN8To",
            "",
            "policy_sha256_fingerprint",
        ),
        ("", "00:ad:3e", "policy_serial_number"),
        ("", "00:AD:3E", "policy_serial_number"),
    ],
)
def test_policy_lists(fingerprint: str, serial: str, source: str) -> None:
    revoked = RevokedCertificates(
        serial_numbers=frozenset({"00:ad:3e"}),
        sha256_fingerprints=frozenset({"om8vGt3r6eTx5TI1kCeNKRJYZTUreIbHGu+Gu8FN8To"}),
    )
    cert = ClientCertificate(
        present=True,
        chain_verified=True,
        sha256_fingerprint=fingerprint,
        serial_number=serial,
    )
    with pytest.raises(InvalidClientError) as caught:
        revoked.check(cert)
    assert caught.value.log_labels == {"revoked_by": source}
    revoked.check(ClientCertificate(present=True, chain_verified=True))
