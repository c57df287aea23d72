"""Revoked client certificates: the policy's lists and ``CRL_FILE``.

The client policy can list revoked serial numbers and SHA-256 fingerprints.
``CRL_FILE`` contains one or more X.509 certificate revocation lists (RFC 5280
§5), PEM or DER, read once at cold start. A serial on a CRL is revoked only
for certificates whose issuer is that CRL's issuer, so the check needs the
issuer: from the issuer DN header or from the leaf certificate header.
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from shared.client_cert import ClientCertificate
from shared.config import CRL_FILE, ConfigurationError
from shared.errors import InvalidClientError

_LOGGER = logging.getLogger(__name__)

_PEM_CRL = re.compile(
    rb"-----BEGIN X509 CRL-----\r?\n.+?-----END X509 CRL-----", re.DOTALL
)
# A CRL file is small; this bounds what is read at start-up.
MAX_CRL_FILE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class RevokedCertificates:
    """Serial numbers and fingerprints that the client policy lists as revoked.

    Serials are lowercase hex bytes joined by ``:``, fingerprints unpadded
    standard base64: the formats of the load balancer's headers.
    """

    serial_numbers: frozenset[str] = frozenset()
    sha256_fingerprints: frozenset[str] = frozenset()

    def check(self, cert: ClientCertificate) -> None:
        """Reject a certificate that the policy lists.

        Raises:
            InvalidClientError: The serial or the fingerprint is listed.
        """
        if cert.sha256_fingerprint in self.sha256_fingerprints:
            raise _revoked("policy_sha256_fingerprint")
        if cert.serial_number.lower() in self.serial_numbers:
            raise _revoked("policy_serial_number")


@dataclass(frozen=True)
class StaleCrl:
    """A CRL whose nextUpdate has passed: its issuer and that time."""

    issuer: str
    next_update: datetime.datetime


class RevocationLists:
    """The revoked serials of each CRL issuer in ``CRL_FILE``."""

    def __init__(self, crls: Sequence[x509.CertificateRevocationList]) -> None:
        self._crls = tuple(crls)
        revoked: dict[bytes, set[int]] = {}
        for crl in crls:
            serials = revoked.setdefault(crl.issuer.public_bytes(), set())
            serials.update(entry.serial_number for entry in crl)
        self._revoked = {issuer: frozenset(s) for issuer, s in revoked.items()}

    @classmethod
    def from_file(
        cls, path: Path, trust_anchors: Iterable[x509.Certificate] = ()
    ) -> RevocationLists:
        """Load every CRL in a PEM or DER file.

        A CRL whose issuer is one of ``trust_anchors`` must carry that
        anchor's valid signature. CRLs of other issuers, such as
        intermediates, are taken as they are: the file comes from the
        operator, through Secret Manager.

        Raises:
            ConfigurationError: The file is unreadable, contains no CRL, or a
                CRL's signature does not verify.
        """
        crls = _load_crls(path)
        anchors = {anchor.subject.public_bytes(): anchor for anchor in trust_anchors}
        for crl in crls:
            anchor = anchors.get(crl.issuer.public_bytes())
            if anchor is not None and not _signed_by(crl, anchor):
                raise ConfigurationError(
                    CRL_FILE,
                    f"the CRL of {crl.issuer.rfc4514_string()!r} in {str(path)!r} "
                    "is not signed by that CA in TRUSTED_CA_FILE; download it "
                    "again from the CA.",
                )
        return cls(crls)

    @property
    def issuers(self) -> tuple[str, ...]:
        """The CRL issuers, as RFC 4514 strings."""
        return tuple(crl.issuer.rfc4514_string() for crl in self._crls)

    def stale(self, now: datetime.datetime) -> list[StaleCrl]:
        """Return the CRLs whose nextUpdate is before ``now``."""
        return [
            StaleCrl(crl.issuer.rfc4514_string(), crl.next_update_utc)
            for crl in self._crls
            if crl.next_update_utc is not None and crl.next_update_utc < now
        ]

    def check(self, cert: ClientCertificate) -> None:
        """Reject a certificate that a CRL of its issuer lists.

        The check fails closed: a certificate whose issuer or serial is
        unknown is rejected, because its status cannot be determined.

        Raises:
            InvalidClientError: The certificate is revoked, or its issuer or
                serial number is unknown.
        """
        if cert.issuer is None:
            raise InvalidClientError(
                reason="revocation_status_unknown",
                detail="CRL_FILE is set but the request names no issuer; the "
                "issuer DN and leaf headers are empty or missing",
            )
        serials = self._revoked.get(cert.issuer.public_bytes())
        if serials is None:
            return
        serial = serial_number_value(cert.serial_number)
        if serial is None:
            raise InvalidClientError(
                reason="revocation_status_unknown",
                detail="CRL_FILE lists the certificate's issuer but the request "
                "carries no serial number",
            )
        if serial in serials:
            raise _revoked("crl")


def serial_number_value(text: str) -> int | None:
    """Return the integer of an LB-format serial (``00:ad:…``), or None."""
    if not text:
        return None
    try:
        data = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        return None
    # The LB sends the DER INTEGER's content bytes, a two's complement value.
    return int.from_bytes(data, "big", signed=True) if data else None


def _revoked(source: str) -> InvalidClientError:
    return InvalidClientError(
        reason="certificate_revoked",
        log_labels={"revoked_by": source},
        detail=f"the certificate is revoked ({source})",
    )


def _load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CRL_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigurationError(
            CRL_FILE, f"cannot read {str(path)!r} ({type(error).__name__})."
        ) from None
    if len(data) > MAX_CRL_FILE_BYTES:
        raise ConfigurationError(
            CRL_FILE, f"{str(path)!r} exceeds {MAX_CRL_FILE_BYTES} bytes."
        )
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            blocks = _PEM_CRL.findall(data)
            if not blocks:
                raise ValueError("no X509 CRL block")
            return [x509.load_pem_x509_crl(block) for block in blocks]
        return [x509.load_der_x509_crl(data)]
    except ValueError as error:
        raise ConfigurationError(
            CRL_FILE,
            f"cannot load {str(path)!r} as a PEM or DER CRL ({error}); export "
            "it with: openssl crl -in CRL -outform PEM.",
        ) from None


def _signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
