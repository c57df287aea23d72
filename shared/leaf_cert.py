"""Whole client certificates from request headers, and their verification.

The load balancer can forward the verified leaf in ``{client_cert_leaf}`` and
the rest of the chain in ``{client_cert_chain}``, each certificate encoded as
an RFC 9440 byte sequence: ``:`` + base64(DER) + ``:`` (RFC 9440 §2.1, RFC
8941 §3.3.5). The chain is a comma-separated list of those, without the leaf
(RFC 9440 §2.2). Its ``{client_cert_subject_dn}`` and ``{client_cert_issuer_dn}``
variables are base64 of the DER ``Name``.

With ``TRUSTED_CA_FILE`` the service verifies leaf and chain itself with
``cryptography.x509.verification``, so a front end that forwards every
presented certificate can be used without trusting its verdict.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from shared.config import TRUSTED_CA_FILE, ConfigurationError

# The load balancer empties {client_cert_leaf} above 16 KB of DER, and
# {client_cert_chain} when leaf and chain together exceed it.
MAX_CERTIFICATE_BYTES = 16 * 1024
# The load balancer rejects chains with more than 10 intermediates.
MAX_INTERMEDIATES = 10
# The load balancer empties a DN header above 512 bytes.
MAX_DN_HEADER_LENGTH = 1024

_BYTE_SEQUENCE = re.compile(r":([A-Za-z0-9+/]*={0,2}):")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_SPIFFE_PREFIX = "spiffe://"


@dataclass(frozen=True)
class LeafFacts:
    """The facts of a leaf certificate, in the formats of the LB's headers."""

    sha256_fingerprint: str
    serial_number: str
    spiffe_id: str
    uri_sans: tuple[str, ...]
    dns_sans: tuple[str, ...]
    subject: x509.Name
    issuer: x509.Name
    not_before: datetime.datetime
    not_after: datetime.datetime


def parse_byte_sequence(item: str) -> bytes | None:
    """Decode one RFC 8941 byte sequence, ``:base64:``, or return None.

    Padding is optional, as RFC 8941 §4.2.7 lets parsers accept it missing.
    """
    match = _BYTE_SEQUENCE.fullmatch(item.strip())
    if match is None or not match.group(1):
        return None
    body = match.group(1).rstrip("=")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error:
        return None


def parse_leaf_header(value: str) -> x509.Certificate | None:
    """Parse ``{client_cert_leaf}``: one DER certificate, or None if invalid."""
    der = parse_byte_sequence(value)
    if der is None or len(der) > MAX_CERTIFICATE_BYTES:
        return None
    return _load_der_certificate(der)


def parse_chain_header(value: str) -> tuple[x509.Certificate, ...] | None:
    """Parse ``{client_cert_chain}``, or return None if any item is invalid.

    Items may be separated by ``,`` or ``, `` (RFC 8941 lists use the latter).
    """
    items = value.split(",")
    if len(items) > MAX_INTERMEDIATES:
        return None
    certificates: list[x509.Certificate] = []
    total = 0
    for item in items:
        der = parse_byte_sequence(item)
        if der is None:
            return None
        total += len(der)
        certificate = _load_der_certificate(der)
        if certificate is None or total > MAX_CERTIFICATE_BYTES:
            return None
        certificates.append(certificate)
    return tuple(certificates)


def parse_dn_header(value: str) -> x509.Name | None:
    """Parse a base64 DER ``Name`` (``{client_cert_subject_dn}``), or None."""
    if len(value) > MAX_DN_HEADER_LENGTH or not _BASE64.fullmatch(value):
        return None
    body = value.rstrip("=")
    try:
        der = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error:
        return None
    return load_der_name(der)


def load_der_name(der: bytes) -> x509.Name | None:
    """Parse a DER-encoded X.501 ``Name``, or return None if it is invalid.

    cryptography has no public parser for a bare ``Name``. A certificate list
    (RFC 5280 §5.1) has the issuer ``Name`` as its only field besides an
    algorithm identifier and a time, so the ``Name`` is wrapped in the
    smallest such structure and parsed with ``load_der_x509_crl``. The
    wrapper's signature is never checked or used.
    """
    tbs = _der(0x30, _CRL_ALGORITHM + der + _CRL_THIS_UPDATE)
    wrapper = _der(0x30, tbs + _CRL_ALGORITHM + _der(0x03, b"\x00"))
    try:
        name = x509.load_der_x509_crl(wrapper).issuer
        name.rfc4514_string()
    except ValueError:
        return None
    # Reject trailing or reordered bytes that the parser skipped over.
    return name if name.public_bytes() == der else None


# sha256WithRSAEncryption with NULL parameters, and 1970-01-01 as UTCTime:
# placeholders that only make the wrapper in load_der_name well-formed.
_CRL_ALGORITHM = bytes.fromhex("300d06092a864886f70d01010b0500")
_CRL_THIS_UPDATE = bytes.fromhex("170d3730303130313030303030305a")


def _der(tag: int, body: bytes) -> bytes:
    length = len(body)
    if length < 0x80:
        return bytes([tag, length]) + body
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + body


def _load_der_certificate(der: bytes) -> x509.Certificate | None:
    """Load a certificate, or None if it or any field read later is invalid.

    cryptography parses extensions and names lazily, so they are read here
    once: an invalid SAN must reject the header, not fail a later step.
    """
    try:
        certificate = x509.load_der_x509_certificate(der)
        _ = certificate.extensions
        certificate.subject.rfc4514_string()
        certificate.issuer.rfc4514_string()
        describe_leaf(certificate)
    except (ValueError, x509.InvalidVersion):
        return None
    return certificate


def describe_leaf(certificate: x509.Certificate) -> LeafFacts:
    """Derive every fact the LB's headers carry from the certificate itself.

    As in the load balancer's headers, the SPIFFE ID is the certificate's
    only ``spiffe://`` URI SAN (empty when it has none or several), and
    ``uri_sans`` lists the other URI SANs.
    """
    uris, dns_names = _subject_alternative_names(certificate)
    spiffe = [uri for uri in uris if uri.lower().startswith(_SPIFFE_PREFIX)]
    return LeafFacts(
        sha256_fingerprint=sha256_fingerprint(certificate),
        serial_number=format_serial_number(certificate.serial_number),
        spiffe_id=spiffe[0] if len(spiffe) == 1 else "",
        uri_sans=tuple(uri for uri in uris if uri not in spiffe),
        dns_sans=tuple(dns_names),
        subject=certificate.subject,
        issuer=certificate.issuer,
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


def sha256_fingerprint(certificate: x509.Certificate) -> str:
    """Return SHA-256 over the DER certificate, standard base64, unpadded."""
    digest = certificate.fingerprint(hashes.SHA256())
    return base64.b64encode(digest).decode("ascii").rstrip("=")


def format_serial_number(serial: int) -> str:
    """Format a serial as the LB does: DER INTEGER content bytes, hex, ``:``."""
    magnitude = serial if serial >= 0 else ~serial
    # One bit more than the magnitude leaves room for the sign bit, so a
    # positive serial whose top bit is set gets a leading 00 byte.
    data = serial.to_bytes((magnitude.bit_length() + 8) // 8, "big", signed=True)
    return ":".join(f"{byte:02x}" for byte in data)


def _subject_alternative_names(
    certificate: x509.Certificate,
) -> tuple[list[str], list[str]]:
    try:
        san = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        return [], []
    return (
        san.get_values_for_type(x509.UniformResourceIdentifier),
        san.get_values_for_type(x509.DNSName),
    )


class ChainVerifier:
    """Verifies client chains against the trust anchors of ``TRUSTED_CA_FILE``.

    The policy is the Web PKI client profile of ``cryptography`` with EKU
    clientAuth required on the leaf, as the load balancer requires it, and a
    SAN allowed to be absent, as the load balancer's requirements do not
    mention one.
    """

    def __init__(self, anchors: Sequence[x509.Certificate]) -> None:
        if not anchors:
            raise ValueError("at least one trust anchor is required")
        self._anchors = tuple(anchors)
        self._store = Store(list(anchors))
        self._ee_policy = (
            ExtensionPolicy.webpki_defaults_ee()
            .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
            .require_present(
                x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _require_client_auth
            )
        )
        self._ca_policy = ExtensionPolicy.webpki_defaults_ca()

    @classmethod
    def from_file(cls, path: Path) -> ChainVerifier:
        """Load a PEM bundle of trust anchors.

        Raises:
            ConfigurationError: The file contains no PEM certificate.
        """
        try:
            anchors = x509.load_pem_x509_certificates(path.read_bytes())
        except (OSError, ValueError) as error:
            raise ConfigurationError(
                TRUSTED_CA_FILE,
                f"cannot load {str(path)!r} as a PEM bundle of CA certificates "
                f"({type(error).__name__}); use the same files as the "
                "TrustConfig's trust anchors.",
            ) from None
        return cls(anchors)

    @property
    def anchors(self) -> tuple[x509.Certificate, ...]:
        """The trust anchors, in file order."""
        return self._anchors

    def verify(
        self,
        leaf: x509.Certificate,
        intermediates: Sequence[x509.Certificate],
        now: datetime.datetime,
    ) -> str | None:
        """Verify ``leaf`` through ``intermediates`` to a trust anchor.

        The chain is verified at the instant of the leaf's validity period
        closest to ``now``, so that a leaf within the clock-skew allowance
        of the validity check is not rejected here. Callers check the
        leaf's validity period first.

        Returns:
            None when the chain is valid, else the verifier's message.
        """
        moment = min(max(now, leaf.not_valid_before_utc), leaf.not_valid_after_utc)
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(moment)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, list(intermediates))
        except VerificationError as error:
            return str(error)
        return None


def _require_client_auth(
    policy: Policy, certificate: x509.Certificate, usage: x509.ExtendedKeyUsage
) -> None:
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise ValueError("the leaf certificate lacks the clientAuth EKU")
