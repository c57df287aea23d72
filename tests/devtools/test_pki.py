"""Tests for the demo PKI generator of the local stack."""

from __future__ import annotations

import datetime
import ipaddress
import stat
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.local import pki

from .conftest import REPO_ROOT, tool_environment

EXPECTED_FILES = (
    "ca.pem",
    "ca-key.pem",
    "client-cert.pem",
    "client-key.pem",
    "server-cert.pem",
    "server-key.pem",
    "signing-key.pem",
    "other-ca.pem",
    "other-ca-key.pem",
    "other-client-cert.pem",
    "other-client-key.pem",
)
_T = TypeVar("_T", bound=x509.ExtensionType)

KEY_FILES = [name for name in EXPECTED_FILES if name.endswith("key.pem")]


def _cert(pki_dir: Path, name: str) -> x509.Certificate:
    return pki.load_certificate(pki_dir / name)


def _extension(cert: x509.Certificate, kind: type[_T]) -> _T:
    return cert.extensions.get_extension_for_class(kind).value


def _validity(cert: x509.Certificate) -> datetime.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


@pytest.mark.parametrize("name", EXPECTED_FILES)
def test_generate_pki_creates_file(pki_dir: Path, name: str) -> None:
    assert (pki_dir / name).is_file()


@pytest.mark.parametrize("name", KEY_FILES)
def test_generate_pki_key_mode_0600(pki_dir: Path, name: str) -> None:
    assert stat.S_IMODE((pki_dir / name).stat().st_mode) == 0o600


def test_ca_is_self_signed_root(pki_dir: Path) -> None:
    ca = _cert(pki_dir, "ca.pem")
    common_name = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "token-service demo root CA"
    assert ca.issuer == ca.subject
    assert _extension(ca, x509.BasicConstraints).ca is True
    assert _extension(ca, x509.KeyUsage).key_cert_sign is True
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    ca.verify_directly_issued_by(ca)


def test_ca_valid_ten_years(pki_dir: Path) -> None:
    days = _validity(_cert(pki_dir, "ca.pem")).days
    assert 3650 <= days <= 3651


def test_client_cert_issued_by_demo_ca(pki_dir: Path) -> None:
    client = _cert(pki_dir, "client-cert.pem")
    client.verify_directly_issued_by(_cert(pki_dir, "ca.pem"))
    assert isinstance(client.signature_hash_algorithm, hashes.SHA256)


def test_client_cert_key_matches(pki_dir: Path) -> None:
    key = pki.load_private_key(pki_dir / "client-key.pem")
    assert _cert(pki_dir, "client-cert.pem").public_key() == key.public_key()


def test_client_cert_eku_client_auth(pki_dir: Path) -> None:
    eku = _extension(_cert(pki_dir, "client-cert.pem"), x509.ExtendedKeyUsage)
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_client_cert_not_ca(pki_dir: Path) -> None:
    client = _cert(pki_dir, "client-cert.pem")
    assert _extension(client, x509.BasicConstraints).ca is False
    assert _extension(client, x509.KeyUsage).digital_signature is True
    assert _extension(client, x509.KeyUsage).key_cert_sign is False


def test_client_cert_sans(pki_dir: Path) -> None:
    san = _extension(_cert(pki_dir, "client-cert.pem"), x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://demo.example.com/device/demo-client",
        "https://devices.example.com/demo-client",
    ]
    assert san.get_values_for_type(x509.DNSName) == ["demo-client.example.com"]


def test_client_cert_serial_top_bit_set(pki_dir: Path) -> None:
    serial = _cert(pki_dir, "client-cert.pem").serial_number
    # A bit length that is a multiple of 8 means the top bit of the top byte
    # is set, so DER needs a leading 00 byte to keep the INTEGER positive.
    assert serial.bit_length() % 8 == 0
    assert serial.bit_length() == 152


def test_client_cert_valid_one_year(pki_dir: Path) -> None:
    days = _validity(_cert(pki_dir, "client-cert.pem")).days
    assert 365 <= days <= 366


def test_server_cert_names_localhost(pki_dir: Path) -> None:
    server = _cert(pki_dir, "server-cert.pem")
    san = _extension(server, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_server_cert_eku_server_auth(pki_dir: Path) -> None:
    server = _cert(pki_dir, "server-cert.pem")
    eku = _extension(server, x509.ExtendedKeyUsage)
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    server.verify_directly_issued_by(_cert(pki_dir, "ca.pem"))


def test_signing_key_rsa_2048_pkcs8(pki_dir: Path) -> None:
    path = pki_dir / "signing-key.pem"
    key = pki.load_private_key(path)
    assert isinstance(key, rsa.RSAPrivateKey)
    assert key.key_size == 2048
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_other_client_cert_from_other_ca(pki_dir: Path) -> None:
    other = _cert(pki_dir, "other-client-cert.pem")
    other.verify_directly_issued_by(_cert(pki_dir, "other-ca.pem"))
    assert other.issuer != _cert(pki_dir, "ca.pem").subject


def test_other_client_cert_same_san_shape(pki_dir: Path) -> None:
    san = _extension(
        _cert(pki_dir, "other-client-cert.pem"), x509.SubjectAlternativeName
    )
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert len(uris) == 2
    assert uris[0].startswith("spiffe://")
    assert uris[0] != "spiffe://demo.example.com/device/demo-client"
    assert len(san.get_values_for_type(x509.DNSName)) == 1


def test_generate_pki_second_run_creates_nothing(tmp_path: Path) -> None:
    pki.generate_pki(tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    created = pki.generate_pki(tmp_path)

    assert created == []
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_generate_pki_recreates_only_missing_pair(tmp_path: Path) -> None:
    pki.generate_pki(tmp_path)
    ca_before = (tmp_path / "ca.pem").read_bytes()
    (tmp_path / "client-cert.pem").unlink()
    (tmp_path / "client-key.pem").unlink()

    created = pki.generate_pki(tmp_path)

    assert sorted(path.name for path in created) == [
        "client-cert.pem",
        "client-key.pem",
    ]
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    _cert(tmp_path, "client-cert.pem").verify_directly_issued_by(
        _cert(tmp_path, "ca.pem")
    )


def test_generate_pki_lone_certificate_raises(tmp_path: Path) -> None:
    pki.generate_pki(tmp_path)
    (tmp_path / "client-key.pem").unlink()

    with pytest.raises(pki.PkiError, match="client-key.pem is missing"):
        pki.generate_pki(tmp_path)


def test_generate_pki_leaf_without_ca_raises(tmp_path: Path) -> None:
    pki.generate_pki(tmp_path)
    (tmp_path / "ca.pem").unlink()
    (tmp_path / "ca-key.pem").unlink()

    with pytest.raises(pki.PkiError, match="its CA"):
        pki.generate_pki(tmp_path)
    assert not (tmp_path / "ca.pem").exists()


def test_generate_pki_leaf_from_foreign_ca_raises(tmp_path: Path) -> None:
    pki.generate_pki(tmp_path)
    for name in ("ca.pem", "ca-key.pem"):
        (tmp_path / name).unlink()
    replacement = pki.create_certificate_authority(pki.DEMO_CA_NAME)
    pki.write_certificate(tmp_path / "ca.pem", replacement.certificate)
    pki.write_private_key(tmp_path / "ca-key.pem", replacement.private_key)

    with pytest.raises(pki.PkiError, match="was not issued by"):
        pki.generate_pki(tmp_path)


def test_write_certificate_never_overwrites(tmp_path: Path) -> None:
    ca = pki.create_certificate_authority("test CA")
    path = tmp_path / "ca.pem"
    path.write_text("keep me")

    with pytest.raises(FileExistsError):
        pki.write_certificate(path, ca.certificate)
    assert path.read_text() == "keep me"


def test_issue_client_certificate_options(tmp_path: Path) -> None:
    ca = pki.create_certificate_authority("test CA", key_type="rsa")
    not_after = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)

    issued = pki.issue_client_certificate(
        ca.certificate,
        ca.private_key,
        common_name="device-7",
        dns_names=("a.example.com", "b.example.com"),
        uris=("https://a.example.com/x",),
        not_after=not_after,
        key_type="rsa",
        extended_key_usage=None,
    )

    cert = issued.certificate
    san = _extension(cert, x509.SubjectAlternativeName)
    assert san.get_values_for_type(x509.DNSName) == ["a.example.com", "b.example.com"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "https://a.example.com/x"
    ]
    assert cert.not_valid_after_utc == not_after
    assert isinstance(issued.private_key, rsa.RSAPrivateKey)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_generate_private_key_default_p256() -> None:
    key = pki.generate_private_key()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


@pytest.mark.e2e
def test_cli_prints_created_then_nothing(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    command = [sys.executable, "-m", "deploy.local.pki", "--out", str(out)]

    first = subprocess.run(  # noqa: S603 - fixed argv, no shell
        command,
        cwd=REPO_ROOT,
        env=tool_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    second = subprocess.run(  # noqa: S603 - fixed argv, no shell
        command,
        cwd=REPO_ROOT,
        env=tool_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert first.stdout.count("created ") == len(EXPECTED_FILES)
    assert f"created {out / 'ca.pem'}" in first.stdout
    assert "created " not in second.stdout
