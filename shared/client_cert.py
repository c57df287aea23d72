"""Client certificate facts, parsed from the load balancer's request headers.

The load balancer verifies the certificate chain against its TrustConfig and
forwards what it found in custom request headers. Nothing here is trusted
unless both the "present" and the "chain verified" headers say ``true``.
Values are checked against the formats the load balancer produces; a value
that does not match is dropped and named in ``ClientCertificate.problems``,
so a malformed header can never become a client id.

When the opt-in leaf header is configured and set, every fact comes from the
certificate it carries instead, after its SHA-256 is checked against the
fingerprint header, and with ``TRUSTED_CA_FILE`` the service verifies the
chain itself. The optional load balancer secret proves that the headers were
set by the load balancer and not by a client that reached the function
another way.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from werkzeug.datastructures import Headers

from shared import lb_headers
from shared.config import HeaderNames, LbSecret
from shared.errors import InvalidClientError
from shared.leaf_cert import (
    ChainVerifier,
    LeafFacts,
    describe_leaf,
    parse_chain_header,
    parse_dn_header,
    parse_leaf_header,
)

# Standard base64 of a SHA-256 digest: 43 characters, unpadded as the load
# balancer sends it; a padded copy from another front end is accepted.
_FINGERPRINT_PATTERN = re.compile(r"[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=?")
# Hex bytes joined by ":"; the load balancer empties serials over 50 bytes.
_SERIAL_PATTERN = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){0,49}")
# The load balancer empties SPIFFE IDs over 2048 bytes.
_SPIFFE_PATTERN = re.compile(r"spiffe://[\x21-\x2b\x2d-\x7e]{1,2039}")
_SAN_VALUE_PATTERN = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,2048}")
MAX_SAN_HEADER_LENGTH = 4096
_RFC3339_PATTERN = re.compile(
    r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d{1,9})?([Zz]|[+-]\d\d:\d\d)"
)

# Allowance for clocks that differ between this service, the CA and the
# client: a certificate is accepted from 60 s before its notBefore until 60 s
# after its notAfter. Google STS allows about the same skew on tokens.
CLOCK_SKEW = timedelta(seconds=60)

_Parser = Callable[[str], object]


@dataclass(frozen=True)
class ClientCertificate:
    """What the load balancer reported about the client's certificate.

    Identity fields are empty unless the header held a well-formed value.
    """

    present: bool
    chain_verified: bool
    error: str = ""
    sha256_fingerprint: str = ""
    serial_number: str = ""
    spiffe_id: str = ""
    uri_sans: tuple[str, ...] = ()
    dns_sans: tuple[str, ...] = ()
    not_before: datetime | None = None
    not_after: datetime | None = None
    subject: x509.Name | None = None
    issuer: x509.Name | None = None
    leaf: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    leaf_invalid: bool = False
    facts_source: str = "headers"
    missing_headers: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    # The client id header is a SAN header holding several comma-separated
    # parts, which cannot be told apart from a repeated header.
    client_id_ambiguous: bool = False

    @property
    def verified(self) -> bool:
        """Whether the load balancer saw a certificate and verified its chain."""
        return self.present and self.chain_verified


def parse_certificate_headers(
    headers: Mapping[str, str] | Headers, names: HeaderNames
) -> ClientCertificate:
    """Read the certificate facts from request headers.

    Args:
        headers: Request headers, looked up case-insensitively.
        names: The configured header names.
    """
    problems: list[str] = []

    def parsed(key: str, parse: _Parser) -> object:
        raw = headers.get(names[key])
        if raw is None or not raw.strip():
            return None
        value = parse(raw.strip())
        if value is None:
            problems.append(names[key])
        return value

    def optional(key: str, parse: _Parser) -> object:
        name = names.optional_name(key)
        raw = None if name is None else headers.get(name)
        if name is None or raw is None or not raw.strip():
            return None
        value = parse(raw.strip())
        if value is None:
            problems.append(name)
        return value

    missing = tuple(
        names[key]
        for key in ("present", "chain_verified")
        if headers.get(names[key]) is None
    )
    leaf_problems = len(problems)
    leaf = optional(lb_headers.LEAF.key, parse_leaf_header)
    leaf_invalid = len(problems) > leaf_problems
    return ClientCertificate(
        present=_is_true(headers.get(names["present"])),
        chain_verified=_is_true(headers.get(names["chain_verified"])),
        error=_printable(headers.get(names["error"], ""))[:512],
        sha256_fingerprint=_str(parsed("sha256_fingerprint", parse_fingerprint)),
        serial_number=_str(parsed("serial_number", _match(_SERIAL_PATTERN))),
        spiffe_id=_str(parsed("spiffe_id", _match(_SPIFFE_PATTERN))),
        uri_sans=_tuple(parsed("uri_sans", decode_san_header)),
        dns_sans=_tuple(parsed("dnsname_sans", decode_san_header)),
        not_before=_datetime(parsed("valid_not_before", parse_rfc3339)),
        not_after=_datetime(parsed("valid_not_after", parse_rfc3339)),
        subject=_name(optional(lb_headers.SUBJECT_DN.key, parse_dn_header)),
        issuer=_name(optional(lb_headers.ISSUER_DN.key, parse_dn_header)),
        leaf=leaf if isinstance(leaf, x509.Certificate) else None,
        chain=_certificates(optional(lb_headers.CHAIN.key, parse_chain_header)),
        leaf_invalid=leaf_invalid,
        missing_headers=missing,
        problems=tuple(problems),
        client_id_ambiguous=_san_client_id_ambiguous(headers, names),
    )


def _san_client_id_ambiguous(
    headers: Mapping[str, str] | Headers, names: HeaderNames
) -> bool:
    # gunicorn joins a repeated header's values with ",", the separator of
    # the per-entry SAN encoding too, so a client id from such a value could
    # come from the first copy of a forged header. The cost: under the
    # per-entry reading, a certificate with several SANs of that type cannot
    # use a SAN header as its client id. The fingerprint or SPIFFE header can.
    if names.client_id_key not in (
        lb_headers.URI_SANS.key,
        lb_headers.DNSNAME_SANS.key,
    ):
        return False
    raw = headers.get(names.client_id) or ""
    return "," in raw.strip()


class CertificateHeaderParser:
    """Parses certificate headers, remembering the results for recent values.

    A client presents the same certificate on every request, so its headers
    repeat. Parsing is a pure function of the header values and its result
    is immutable, which makes a bounded cache safe to share between threads.
    """

    def __init__(self, names: HeaderNames, cache_size: int = 1024) -> None:
        self._names = names
        self._header_names = tuple(
            dict.fromkeys([*names.by_key.values(), *names.optional.values()])
        )
        self._parse_values = functools.lru_cache(maxsize=cache_size)(
            self._parse_uncached
        )

    def parse(self, headers: Mapping[str, str] | Headers) -> ClientCertificate:
        """Return the certificate facts of ``headers``."""
        values = tuple(headers.get(name) for name in self._header_names)
        return self._parse_values(values)

    def _parse_uncached(self, values: tuple[str | None, ...]) -> ClientCertificate:
        present = {
            name: value
            for name, value in zip(self._header_names, values, strict=True)
            if value is not None
        }
        return parse_certificate_headers(present, self._names)


def client_id_of(cert: ClientCertificate, names: HeaderNames) -> str:
    """Return the client id: the configured header's value, or its first SAN."""
    key = names.client_id_key
    if cert.client_id_ambiguous:
        return ""
    if key == "sha256_fingerprint":
        return cert.sha256_fingerprint
    if key == "spiffe_id":
        return cert.spiffe_id
    sans = cert.uri_sans if key == "uri_sans" else cert.dns_sans
    return sans[0] if sans else ""


def parse_fingerprint(value: str) -> str | None:
    """Return the fingerprint in the load balancer's unpadded form, or None."""
    if not _FINGERPRINT_PATTERN.fullmatch(value):
        return None
    return value.rstrip("=")


def decode_san_header(value: str) -> tuple[str, ...] | None:
    """Decode a SAN header in either reading of the load balancer's format.

    The documentation calls the value a "comma-separated Base64-encoded
    list", which can mean each SAN encoded and then joined by commas, or the
    comma-joined list encoded as a whole. Splitting on commas, decoding each
    part and splitting the result again handles both. Returns None when any
    part is not valid base64 of printable ASCII SANs.
    """
    if len(value) > MAX_SAN_HEADER_LENGTH:
        return None
    sans: list[str] = []
    for part in value.split(","):
        decoded = _b64decode_text(part.strip())
        if decoded is None:
            return None
        for san in decoded.split(","):
            san = san.strip()
            if not _SAN_VALUE_PATTERN.fullmatch(san):
                return None
            sans.append(san)
    return tuple(sans)


def parse_rfc3339(value: str) -> datetime | None:
    """Parse an RFC 3339 timestamp with an offset, or return None."""
    if not _RFC3339_PATTERN.fullmatch(value):
        return None
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed


def _b64decode_text(part: str) -> str | None:
    if not part or not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", part):
        return None
    padded = part.rstrip("=") + "=" * (-len(part.rstrip("=")) % 4)
    try:
        raw = base64.b64decode(padded, validate=True)
        return raw.decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return None


def _match(pattern: re.Pattern[str]) -> _Parser:
    def parse(value: str) -> str | None:
        return value if pattern.fullmatch(value) else None

    return parse


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def _printable(value: str) -> str:
    return "".join(ch for ch in value.strip() if "\x20" <= ch <= "\x7e")


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _tuple(value: object) -> tuple[str, ...]:
    return value if isinstance(value, tuple) else ()


def _datetime(value: object) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _name(value: object) -> x509.Name | None:
    return value if isinstance(value, x509.Name) else None


def _certificates(value: object) -> tuple[x509.Certificate, ...]:
    return value if isinstance(value, tuple) else ()


def check_lb_secret(headers: Mapping[str, str] | Headers, secret: LbSecret) -> None:
    """Check that the request carries the load balancer's shared secret.

    Each configured secret is compared in constant time.

    Warning:
        The log labels show only whether the header was missing or wrong;
        neither the expected nor the received value is ever logged.

    Raises:
        InvalidClientError: The header is missing or contains no configured
            secret.
    """
    received = headers.get(secret.header)
    if received is None:
        raise InvalidClientError(
            reason="lb_secret_mismatch",
            log_labels={"lb_secret": "missing"},
            detail=f"header {secret.header} is missing, so the request did not "
            "come through the load balancer, or its URL map does not add it",
        )
    data = received.strip().encode("utf-8", errors="replace")
    matches = [hmac.compare_digest(data, value.encode()) for value in secret.values]
    if not any(matches):
        raise InvalidClientError(
            reason="lb_secret_mismatch",
            log_labels={"lb_secret": "mismatch"},
            detail=f"header {secret.header} contains no configured secret; check "
            "that LB_SECRET and the URL map's value match",
        )


def apply_leaf(
    cert: ClientCertificate,
    names: HeaderNames,
    verifier: ChainVerifier | None,
    now: datetime,
) -> ClientCertificate:
    """Replace the header facts with those of the leaf header, when it is set.

    The leaf's SHA-256 must equal the fingerprint header, which the front
    end computes from the certificate the client proved it holds, so a leaf
    header that a client slipped past the front end is rejected. With a
    ``verifier``, its verdict takes the place of the present and chain
    verified headers, except that a front end reporting no certificate at
    all contradicts a leaf header and is believed.

    Raises:
        InvalidClientError: The leaf header is malformed or does not match
            the fingerprint header. With a ``verifier``, also when the
            "present" header is set but not ``true``, or the chain fails.
    """
    if cert.leaf_invalid:
        raise InvalidClientError(
            reason="leaf_malformed",
            detail="the leaf certificate header is not an RFC 9440 byte "
            "sequence (:base64:) of a valid DER certificate",
        )
    if cert.leaf is None:
        return cert
    facts = describe_leaf(cert.leaf)
    if not hmac.compare_digest(facts.sha256_fingerprint, cert.sha256_fingerprint):
        raise InvalidClientError(
            reason="leaf_fingerprint_mismatch",
            log_labels={"leaf_sha256": facts.sha256_fingerprint},
            detail="the leaf certificate header does not match the fingerprint "
            "header, so it is not the certificate the client presented",
        )

    resolved = _with_leaf_facts(cert, facts, names)
    if verifier is None:
        return resolved
    if not cert.present and names["present"] not in cert.missing_headers:
        raise InvalidClientError(
            reason="leaf_without_certificate",
            detail=f"header {names['present']} says the client presented no "
            "certificate, yet a leaf certificate header is set",
        )
    # The verifier checks the chain at a moment within the leaf's validity,
    # so the dates must pass the skew-tolerant check first.
    check_validity(resolved, now)
    error = verifier.verify(cert.leaf, cert.chain, now)
    if error is not None:
        raise InvalidClientError(
            reason="chain_verification_failed",
            detail=f"the certificate chain does not verify against "
            f"TRUSTED_CA_FILE: {error}",
        )
    return dataclasses.replace(
        resolved, present=True, chain_verified=True, missing_headers=()
    )


def _with_leaf_facts(
    cert: ClientCertificate, facts: LeafFacts, names: HeaderNames
) -> ClientCertificate:
    """Take every fact from the leaf, keeping SANs to the header formats.

    A SAN that the SAN headers could not carry, such as one with a comma or
    a control character, is dropped and the leaf header named in
    ``problems``, as a malformed header value would be.
    """
    values = {
        field.name: getattr(facts, field.name) for field in dataclasses.fields(facts)
    }
    values["uri_sans"] = tuple(
        v for v in facts.uri_sans if _SAN_VALUE_PATTERN.fullmatch(v)
    )
    values["dns_sans"] = tuple(
        v for v in facts.dns_sans if _SAN_VALUE_PATTERN.fullmatch(v)
    )
    if facts.spiffe_id and not _SPIFFE_PATTERN.fullmatch(facts.spiffe_id):
        values["spiffe_id"] = ""
    problems = cert.problems
    dropped = (
        len(values["uri_sans"]) < len(facts.uri_sans)
        or len(values["dns_sans"]) < len(facts.dns_sans)
        or values["spiffe_id"] != facts.spiffe_id
    )
    if dropped:
        problems += (names.optional_name(lb_headers.LEAF.key) or "leaf",)
    # SANs from the leaf are unambiguous, whatever the SAN headers held.
    return dataclasses.replace(
        cert,
        facts_source="leaf",
        problems=problems,
        client_id_ambiguous=False,
        **values,
    )


def check_validity(cert: ClientCertificate, now: datetime) -> None:
    """Reject a certificate outside its validity period, allowing clock skew.

    Each bound is checked when it is known; the load balancer sends both for
    a verified chain, even for an allowlisted expired certificate.

    Raises:
        InvalidClientError: ``now`` is more than ``CLOCK_SKEW`` before
            notBefore or after notAfter.
    """
    if cert.not_before is not None and now < cert.not_before - CLOCK_SKEW:
        raise InvalidClientError(
            reason="certificate_not_yet_valid",
            log_labels={"cert_not_before": cert.not_before.isoformat()},
            detail="the certificate's validity period has not started",
        )
    if cert.not_after is not None and now > cert.not_after + CLOCK_SKEW:
        raise InvalidClientError(
            reason="certificate_expired",
            log_labels={"cert_not_after": cert.not_after.isoformat()},
            detail="the certificate's validity period has ended",
        )


def authenticate_client(cert: ClientCertificate, names: HeaderNames) -> str:
    """Return the client id of a verified certificate.

    Raises:
        InvalidClientError: The mTLS headers are missing, the client sent no
            certificate, the load balancer could not verify its chain, or the
            client id header is empty or malformed.
    """
    if cert.missing_headers:
        missing = ", ".join(cert.missing_headers)
        raise InvalidClientError(
            reason="mtls_headers_missing",
            log_labels={"missing_header": missing},
            detail=f"header {missing} missing from the request; check that the "
            "backend service adds the mTLS custom request headers and that the "
            "target HTTPS proxy has a ServerTlsPolicy",
        )
    if not cert.present:
        raise InvalidClientError(
            reason="certificate_missing",
            detail="the client presented no certificate",
        )
    if not cert.chain_verified:
        raise InvalidClientError(
            reason="certificate_not_verified",
            detail="the load balancer could not verify the certificate chain "
            f"({cert.error or 'no error reported'}); check the TrustConfig",
        )

    if cert.client_id_ambiguous:
        raise InvalidClientError(
            reason="client_id_ambiguous",
            log_labels={"client_id_header": names.client_id},
            detail=f"header {names.client_id} holds several comma-separated "
            "values, which cannot be told apart from a repeated header; use the "
            "fingerprint or SPIFFE header as MTLS_HEADER_CLIENT_ID for "
            "certificates with several SANs",
        )
    client_id = client_id_of(cert, names)
    if not client_id:
        raise InvalidClientError(
            reason="client_id_missing",
            log_labels={"client_id_header": names.client_id},
            detail=f"header {names.client_id} is empty or malformed, so the "
            "certificate names no client",
        )
    return client_id


def certificate_labels(cert: ClientCertificate) -> dict[str, str]:
    """Return the certificate's public facts as log labels."""
    return dict(_certificate_labels(cert))


@functools.lru_cache(maxsize=1024)
def _certificate_labels(cert: ClientCertificate) -> dict[str, str]:
    labels = {
        "cert_present": str(cert.present).lower(),
        "cert_chain_verified": str(cert.chain_verified).lower(),
        "cert_error": cert.error,
        "x5_sha256": cert.sha256_fingerprint,
        "x5_serial": cert.serial_number,
        "x5_spiffe": cert.spiffe_id,
        "x5_urisans": ",".join(cert.uri_sans),
        "x5_dnssans": ",".join(cert.dns_sans),
    }
    if cert.subject is not None:
        labels["subject_dn"] = _escaped(cert.subject.rfc4514_string())
    if cert.issuer is not None:
        labels["issuer_dn"] = _escaped(cert.issuer.rfc4514_string())
    if cert.facts_source != "headers":
        labels["cert_facts"] = cert.facts_source
    if cert.problems:
        labels["malformed_headers"] = ",".join(cert.problems)
    return {key: value for key, value in labels.items() if value}


def _escaped(text: str) -> str:
    """Escape characters outside printable ASCII, so a label stays one line."""
    return "".join(ch if "\x20" <= ch <= "\x7e" else f"\\u{ord(ch):04x}" for ch in text)
