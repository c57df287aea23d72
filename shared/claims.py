"""Claims of the ID tokens this service issues.

The token's audience is the Workload Identity Federation provider, and the
``client`` claim carries the certificate facts that the provider's attribute
mapping reads (``assertion.client.x5_sha256`` and so on). The ``cnf`` claim
binds the token to the client certificate (RFC 8705 §3.1).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.client_cert import ClientCertificate
from shared.config import XLB_MTLS_FLOW

# Keys of the ``client`` claim that the service fills from the certificate.
# Policy claims may not reuse them, nor any other key with the x5_ prefix.
CLIENT_CLAIM_KEYS = (
    "x5_spiffe",
    "x5_dnssan",
    "x5_urisan",
    "x5_sha256",
    "x5_serial",
    "x5_dnssans",
    "x5_urisans",
)
RESERVED_CLIENT_CLAIM_PREFIX = "x5_"


@dataclass(frozen=True)
class IdTokenRequest:
    """What an ID token is issued for: who, to whom, when and for how long.

    ``client_claims`` are static strings added to the ``client`` claim; the
    caller guarantees that none of them uses a reserved key.
    """

    issuer: str
    audience: str
    client_id: str
    certificate: ClientCertificate
    issued_at: int
    lifetime_seconds: int
    client_claims: Mapping[str, str] = field(default_factory=dict)


def build_id_token_claims(request: IdTokenRequest) -> dict[str, Any]:
    """Build the claims of an ID token.

    Single-value ``client`` entries are always strings, empty when a fact is
    absent, so that an attribute mapping such as
    ``assertion.client.x5_spiffe`` always evaluates. ``x5_dnssan`` and
    ``x5_urisan`` hold the first SAN, and ``x5_dnssans`` and ``x5_urisans``
    every SAN, as lists that may be empty.
    """
    cert = request.certificate
    claims: dict[str, Any] = {
        "iss": request.issuer,
        "aud": request.audience,
        "sub": request.client_id,
        "iat": request.issued_at,
        "exp": request.issued_at + request.lifetime_seconds,
        "jti": str(uuid.uuid4()),
        "amr": [XLB_MTLS_FLOW],
        "client_id": request.client_id,
        "client": {
            **request.client_claims,
            "x5_spiffe": cert.spiffe_id,
            "x5_dnssan": cert.dns_sans[0] if cert.dns_sans else "",
            "x5_urisan": cert.uri_sans[0] if cert.uri_sans else "",
            "x5_sha256": cert.sha256_fingerprint,
            "x5_serial": cert.serial_number,
            "x5_dnssans": list(cert.dns_sans),
            "x5_urisans": list(cert.uri_sans),
        },
    }
    thumbprint = certificate_thumbprint(cert.sha256_fingerprint)
    if thumbprint:
        claims["cnf"] = {"x5t#S256": thumbprint}
    return claims


def certificate_thumbprint(sha256_fingerprint: str) -> str:
    """Convert the LB's fingerprint to RFC 8705's ``x5t#S256``.

    Both are the SHA-256 of the DER certificate: the load balancer sends
    standard base64 and the claim is base64url without padding (RFC 8705
    §3.1). Returns an empty string for an empty fingerprint.
    """
    if not sha256_fingerprint:
        return ""
    digest = base64.b64decode(sha256_fingerprint + "=" * (-len(sha256_fingerprint) % 4))
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
