"""Custom request headers that carry the client certificate's facts.

The external Application Load Balancer expands one variable per header, as
described in https://cloud.google.com/load-balancing/docs/https/custom-headers-global.
The deployment scripts and the local gateway read the same table, so the
header names the load balancer sends cannot drift from those the code reads.

The ten headers of ``CERTIFICATE_HEADERS`` have default names and are always
read. The four of ``OPTIONAL_HEADERS`` (subject and issuer DN, leaf, chain)
have none: they are read only when their setting names a header, so existing
deployments see no change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MtlsHeader:
    """One certificate fact: its setting, default header name and LB variable.

    ``default_name`` is empty for an opt-in header, which is read only when
    ``setting`` names it.
    """

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

SUBJECT_DN = MtlsHeader(
    "subject_dn",
    "MTLS_HEADER_CLIENT_CERT_SUBJECT_DN",
    "",
    "client_cert_subject_dn",
)
ISSUER_DN = MtlsHeader(
    "issuer_dn",
    "MTLS_HEADER_CLIENT_CERT_ISSUER_DN",
    "",
    "client_cert_issuer_dn",
)
LEAF = MtlsHeader(
    "leaf",
    "MTLS_HEADER_CLIENT_CERT_LEAF",
    "",
    "client_cert_leaf",
)
CHAIN = MtlsHeader(
    "chain",
    "MTLS_HEADER_CLIENT_CERT_CHAIN",
    "",
    "client_cert_chain",
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

# Opt-in headers: read only when their setting names a header.
OPTIONAL_HEADERS: tuple[MtlsHeader, ...] = (SUBJECT_DN, ISSUER_DN, LEAF, CHAIN)

# Names the documentation and the examples use for the opt-in headers.
SUGGESTED_OPTIONAL_NAMES = {
    SUBJECT_DN.key: "X-Client-Cert-Subject-DN",
    ISSUER_DN.key: "X-Client-Cert-Issuer-DN",
    LEAF.key: "X-Client-Cert-Leaf",
    CHAIN.key: "X-Client-Cert-Chain",
}

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


def optional_header_names(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Map each configured opt-in fact's key to its header name.

    A fact whose setting is unset or empty is left out, so it is not read.
    """
    environ = environ or {}
    names = {
        header.key: environ.get(header.setting, "").strip()
        for header in OPTIONAL_HEADERS
    }
    return {key: name for key, name in names.items() if name}
