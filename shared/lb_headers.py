"""Custom request headers that carry the client certificate's facts.

The external Application Load Balancer expands one variable per header, as
described in https://cloud.google.com/load-balancing/docs/https/custom-headers-global.
The deployment scripts and the local gateway read the same table, so the
header names the load balancer sends cannot drift from those the code reads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MtlsHeader:
    """One certificate fact: its setting, default header name and LB variable."""

    key: str
    setting: str
    default_name: str
    lb_variable: str


PRESENT = MtlsHeader(
    "present",
    "MTLS_HEADER_CLIENT_CERT_PRESENT",
    "X-Client-Cert-Present",
    "client_cert_present",
)
CHAIN_VERIFIED = MtlsHeader(
    "chain_verified",
    "MTLS_HEADER_CLIENT_CERT_CHAIN_VERIFIED",
    "X-Client-Cert-Chain-Verified",
    "client_cert_chain_verified",
)
ERROR = MtlsHeader(
    "error",
    "MTLS_HEADER_CLIENT_CERT_ERROR",
    "X-Client-Cert-Error",
    "client_cert_error",
)
SHA256_FINGERPRINT = MtlsHeader(
    "sha256_fingerprint",
    "MTLS_HEADER_CLIENT_CERT_SHA256_FINGERPRINT",
    "X-Client-Cert-Hash",
    "client_cert_sha256_fingerprint",
)
SPIFFE_ID = MtlsHeader(
    "spiffe_id",
    "MTLS_HEADER_CLIENT_CERT_SPIFFE_ID",
    "X-Client-Cert-Spiffe",
    "client_cert_spiffe_id",
)
URI_SANS = MtlsHeader(
    "uri_sans",
    "MTLS_HEADER_CLIENT_CERT_URI_SANS",
    "X-Client-Cert-URI-SANs",
    "client_cert_uri_sans",
)
DNSNAME_SANS = MtlsHeader(
    "dnsname_sans",
    "MTLS_HEADER_CLIENT_CERT_DNSNAME_SANS",
    "X-Client-Cert-DNSName-SANs",
    "client_cert_dnsname_sans",
)
SERIAL_NUMBER = MtlsHeader(
    "serial_number",
    "MTLS_HEADER_CLIENT_CERT_SERIAL_NUMBER",
    "X-Client-Cert-Serial-Number",
    "client_cert_serial_number",
)
VALID_NOT_BEFORE = MtlsHeader(
    "valid_not_before",
    "MTLS_HEADER_CLIENT_CERT_VALID_NOT_BEFORE",
    "X-Client-Cert-Valid-Not-Before",
    "client_cert_valid_not_before",
)
VALID_NOT_AFTER = MtlsHeader(
    "valid_not_after",
    "MTLS_HEADER_CLIENT_CERT_VALID_NOT_AFTER",
    "X-Client-Cert-Valid-Not-After",
    "client_cert_valid_not_after",
)

# The ten headers of the deployment article, in its order.
CERTIFICATE_HEADERS: tuple[MtlsHeader, ...] = (
    PRESENT,
    CHAIN_VERIFIED,
    ERROR,
    SHA256_FINGERPRINT,
    SERIAL_NUMBER,
    SPIFFE_ID,
    URI_SANS,
    DNSNAME_SANS,
    VALID_NOT_BEFORE,
    VALID_NOT_AFTER,
)

# Headers that may name the client: the client id is taken from one of them.
CLIENT_ID_CANDIDATES: tuple[MtlsHeader, ...] = (
    SPIFFE_ID,
    DNSNAME_SANS,
    URI_SANS,
    SHA256_FINGERPRINT,
)

CLIENT_ID_SETTING = "MTLS_HEADER_CLIENT_ID"
CLIENT_ID_DEFAULT = SPIFFE_ID.default_name


def header_names(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Map each fact's key to its header name, with overrides from ``environ``."""
    environ = environ or {}
    return {
        header.key: environ.get(header.setting, "").strip() or header.default_name
        for header in CERTIFICATE_HEADERS
    }
