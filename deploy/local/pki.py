"""Generate the demo PKI of the local stack: CAs, client and server certificates.

Development tool only. Run ``python -m deploy.local.pki --out .local/pki`` from
the repository root. Existing files are kept, and only missing ones are created.
The functions are importable, so tests can mint extra client certificates from
the same CA.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

DEMO_CA_NAME = "token-service demo root CA"
OTHER_CA_NAME = "token-service unknown demo CA"
DEMO_SPIFFE_ID = "spiffe://demo.example.com/device/demo-client"
DEMO_URI = "https://devices.example.com/demo-client"
DEMO_DNS_NAME = "demo-client.example.com"
OTHER_SPIFFE_ID = "spiffe://other.example.com/device/other-client"
OTHER_URI = "https://devices.other.example.com/other-client"
OTHER_DNS_NAME = "other-client.other.example.com"

CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=365)
CRL_VALIDITY = datetime.timedelta(days=7)
# Backdating not_before keeps a fresh certificate valid on a peer whose clock
# runs a little behind.
CLOCK_SKEW = datetime.timedelta(minutes=5)


class PkiError(Exception):
    """The files under the output folder do not form a consistent demo PKI."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and the private key of its subject."""

    certificate: x509.Certificate
    private_key: PrivateKey


def generate_private_key(key_type: KeyType = "ec") -> PrivateKey:
    """Generate an EC P-256 or an RSA 2048 private key."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def random_serial_number() -> int:
    """Return a random serial whose DER encoding starts with a ``00`` byte.

    The serial has 19 random bytes with the top bit set. DER prefixes such a
    positive INTEGER with ``00``, which the load balancer shows in its serial
    header. Twenty random bytes with the top bit set would exceed the 159 bits
    that RFC 5280 and cryptography's ``CertificateBuilder`` allow.
    """
    return int.from_bytes(secrets.token_bytes(19), "big") | (1 << 151)


def create_certificate_authority(
    common_name: str,
    *,
    key_type: KeyType = "ec",
    validity: datetime.timedelta = CA_VALIDITY,
) -> IssuedCertificate:
    """Create a self-signed root CA that may sign leaf certificates."""
    key = generate_private_key(key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
    )
    return IssuedCertificate(builder.sign(key, hashes.SHA256()), key)


def create_intermediate_authority(
    issuer: IssuedCertificate,
    common_name: str,
    *,
    key_type: KeyType = "ec",
    validity: datetime.timedelta = CA_VALIDITY,
) -> IssuedCertificate:
    """Create an intermediate CA signed by ``issuer`` that may sign leaves."""
    key = generate_private_key(key_type)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.private_key.public_key()
            ),
            critical=False,
        )
    )
    return IssuedCertificate(builder.sign(issuer.private_key, hashes.SHA256()), key)


def create_crl(
    ca: IssuedCertificate,
    revoked_serial_numbers: Sequence[int],
    *,
    last_update: datetime.datetime | None = None,
    next_update: datetime.datetime | None = None,
) -> x509.CertificateRevocationList:
    """Create a CRL of ``ca`` that lists ``revoked_serial_numbers``.

    Args:
        ca: The CA that issued the revoked certificates and signs the CRL.
        revoked_serial_numbers: Serials of the revoked certificates.
        last_update: thisUpdate. Defaults to now minus a few minutes.
        next_update: nextUpdate. Defaults to a week after now; a past time
            makes a stale CRL.
    """
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(last_update or now - CLOCK_SKEW)
        .next_update(next_update or now + CRL_VALIDITY)
    )
    for serial in revoked_serial_numbers:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - CLOCK_SKEW)
            .build()
        )
    return builder.sign(ca.private_key, hashes.SHA256())


def issue_client_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    common_name: str,
    organization: str | None = None,
    spiffe_id: str | None = None,
    dns_names: Sequence[str] = (),
    uris: Sequence[str] = (),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    key_type: KeyType = "ec",
    extended_key_usage: Sequence[x509.ObjectIdentifier] | None = (
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
    ca: bool = False,
    serial_number: int | None = None,
) -> IssuedCertificate:
    """Issue a client certificate signed by ``ca_cert``.

    The SPIFFE ID comes first among the URI SANs. The defaults give a
    certificate the load balancer accepts. The remaining keywords let tests
    build certificates it rejects.

    Args:
        ca_cert: The issuing CA's certificate.
        ca_key: The issuing CA's private key.
        common_name: The subject's common name.
        organization: The subject's organization (O), or None for none.
        spiffe_id: A ``spiffe://`` URI SAN, or None for none.
        dns_names: DNSName SANs.
        uris: Further URI SANs.
        not_before: Start of validity. Defaults to now minus a few minutes.
        not_after: End of validity. Defaults to one year after now.
        key_type: ``"ec"`` for P-256 or ``"rsa"`` for RSA 2048.
        extended_key_usage: EKU OIDs, or None to leave the extension out.
        ca: The basicConstraints CA flag.
        serial_number: The serial. Defaults to :func:`random_serial_number`.

    Returns:
        The certificate and the subject's new private key.
    """
    all_uris = ([spiffe_id] if spiffe_id else []) + list(uris)
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(uri) for uri in all_uris
    ]
    names += [x509.DNSName(dns_name) for dns_name in dns_names]
    key = generate_private_key(key_type)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.insert(
            0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)
        )
    builder = _leaf_builder(
        ca_cert,
        ca_key,
        key,
        x509.Name(attributes),
        not_before,
        not_after,
        serial_number,
    )
    builder = builder.add_extension(
        x509.BasicConstraints(ca=ca, path_length=None), critical=True
    ).add_extension(_key_usage(key_cert_sign=ca), critical=True)
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    if extended_key_usage is not None:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(list(extended_key_usage)), critical=False
        )
    return IssuedCertificate(builder.sign(ca_key, hashes.SHA256()), key)


def issue_server_certificate(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    *,
    dns_names: Sequence[str] = ("localhost",),
    ip_addresses: Sequence[str] = ("127.0.0.1", "::1"),
    key_type: KeyType = "ec",
) -> IssuedCertificate:
    """Issue a TLS server certificate signed by ``ca_cert``."""
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    key = generate_private_key(key_type)
    common_name = dns_names[0] if dns_names else ip_addresses[0]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        _leaf_builder(ca_cert, ca_key, key, subject, None, None, None)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(_key_usage(key_cert_sign=False), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
    )
    return IssuedCertificate(builder.sign(ca_key, hashes.SHA256()), key)


def _leaf_builder(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    key: PrivateKey,
    subject: x509.Name,
    not_before: datetime.datetime | None,
    not_after: datetime.datetime | None,
    serial_number: int | None,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial_number or random_serial_number())
        .not_valid_before(not_before or now - CLOCK_SKEW)
        .not_valid_after(not_after or now + LEAF_VALIDITY)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )


def _key_usage(*, key_cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def write_certificate(path: Path, certificate: x509.Certificate) -> None:
    """Write a certificate as PEM. Raises FileExistsError if ``path`` exists."""
    with path.open("xb") as stream:
        stream.write(certificate.public_bytes(serialization.Encoding.PEM))


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write an unencrypted PKCS #8 PEM private key with mode 0600.

    Raises FileExistsError if ``path`` exists.
    """
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(pem)


def load_certificate(path: Path) -> x509.Certificate:
    """Load one PEM certificate."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted PEM private key, which must be EC or RSA."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise PkiError(f"{path}: expected an EC or RSA private key")
    return key


@dataclass(frozen=True)
class _Pair:
    """A certificate file and its key file, with the issuer's pair if any."""

    cert: str
    key: str
    issuer: _Pair | None = None


_DEMO_CA = _Pair("ca.pem", "ca-key.pem")
_OTHER_CA = _Pair("other-ca.pem", "other-ca-key.pem")
_CLIENT = _Pair("client-cert.pem", "client-key.pem", _DEMO_CA)
_SERVER = _Pair("server-cert.pem", "server-key.pem", _DEMO_CA)
_OTHER_CLIENT = _Pair("other-client-cert.pem", "other-client-key.pem", _OTHER_CA)
_PAIRS = (_DEMO_CA, _OTHER_CA, _CLIENT, _SERVER, _OTHER_CLIENT)
SIGNING_KEY_FILE = "signing-key.pem"


def generate_pki(out_dir: Path) -> list[Path]:
    """Create the missing files of the demo PKI under ``out_dir``.

    Existing files are never overwritten. They are checked first, so an
    inconsistent folder raises before anything is written.

    Returns:
        The paths that were created, in creation order.

    Raises:
        PkiError: A certificate or key is missing its partner, does not match
            it, or was not issued by the CA file next to it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for pair in _PAIRS:
        _check_existing_pair(out_dir, pair)

    created: list[Path] = []
    demo_ca = _ensure_ca(out_dir, _DEMO_CA, DEMO_CA_NAME, created)
    other_ca = _ensure_ca(out_dir, _OTHER_CA, OTHER_CA_NAME, created)
    _ensure_leaf(out_dir, _CLIENT, created, lambda: _demo_client(demo_ca))
    _ensure_leaf(
        out_dir,
        _SERVER,
        created,
        lambda: issue_server_certificate(demo_ca.certificate, demo_ca.private_key),
    )
    _ensure_leaf(out_dir, _OTHER_CLIENT, created, lambda: _other_client(other_ca))

    signing_key_path = out_dir / SIGNING_KEY_FILE
    if not signing_key_path.exists():
        write_private_key(signing_key_path, generate_private_key("rsa"))
        created.append(signing_key_path)
    return created


def _demo_client(ca: IssuedCertificate) -> IssuedCertificate:
    return issue_client_certificate(
        ca.certificate,
        ca.private_key,
        common_name="demo-client",
        spiffe_id=DEMO_SPIFFE_ID,
        uris=(DEMO_URI,),
        dns_names=(DEMO_DNS_NAME,),
    )


def _other_client(ca: IssuedCertificate) -> IssuedCertificate:
    return issue_client_certificate(
        ca.certificate,
        ca.private_key,
        common_name="other-client",
        spiffe_id=OTHER_SPIFFE_ID,
        uris=(OTHER_URI,),
        dns_names=(OTHER_DNS_NAME,),
    )


def _check_existing_pair(out_dir: Path, pair: _Pair) -> None:
    cert_path, key_path = out_dir / pair.cert, out_dir / pair.key
    if cert_path.exists() != key_path.exists():
        present, missing = (
            (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
        )
        raise PkiError(
            f"{missing} is missing but {present} exists. "
            f"Delete {present} to create both again"
        )
    if not cert_path.exists():
        return

    cert, key = load_certificate(cert_path), load_private_key(key_path)
    if cert.public_key() != key.public_key():
        raise PkiError(f"{key_path} does not match {cert_path}. Delete both")
    if pair.issuer is None:
        return
    issuer_path = out_dir / pair.issuer.cert
    if not issuer_path.exists():
        raise PkiError(
            f"{cert_path} exists but its CA {issuer_path} is missing. "
            f"Delete {cert_path} and {key_path} to create them with a new CA"
        )
    try:
        cert.verify_directly_issued_by(load_certificate(issuer_path))
    except (ValueError, TypeError, InvalidSignature) as error:
        raise PkiError(
            f"{cert_path} was not issued by {issuer_path}. Delete "
            f"{cert_path} and {key_path} to create them again"
        ) from error


def _ensure_ca(
    out_dir: Path, pair: _Pair, common_name: str, created: list[Path]
) -> IssuedCertificate:
    cert_path, key_path = out_dir / pair.cert, out_dir / pair.key
    if cert_path.exists():
        return IssuedCertificate(
            load_certificate(cert_path), load_private_key(key_path)
        )
    issued = create_certificate_authority(common_name)
    _write_pair(cert_path, key_path, issued, created)
    return issued


def _ensure_leaf(
    out_dir: Path,
    pair: _Pair,
    created: list[Path],
    issue: Callable[[], IssuedCertificate],
) -> None:
    cert_path, key_path = out_dir / pair.cert, out_dir / pair.key
    if not cert_path.exists():
        _write_pair(cert_path, key_path, issue(), created)


def _write_pair(
    cert_path: Path, key_path: Path, issued: IssuedCertificate, created: list[Path]
) -> None:
    # The key goes first: a crash in between leaves a lone key, which the next
    # run reports, instead of a certificate without a usable key.
    write_private_key(key_path, issued.private_key)
    write_certificate(cert_path, issued.certificate)
    created += [key_path, cert_path]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line: create the missing PKI files and list them."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.local.pki",
        description="Create the demo PKI of the local stack (development only).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(".local/pki"),
        help="folder to write the PEM files to (default: .local/pki)",
    )
    args = parser.parse_args(argv)
    try:
        created = generate_pki(args.out)
    except PkiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in created:
        print(f"created {path}")
    if not created:
        print(f"all demo PKI files already exist in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
