"""Claims of the ID tokens this service issues.

The token's audience is the Workload Identity Federation provider, and the
``client`` claim carries the certificate facts that the provider's attribute
mapping reads (``assertion.client.x5_sha256`` and so on).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared.client_cert import ClientCertificate
from shared.config import XLB_MTLS_FLOW


@dataclass(frozen=True)
class IdTokenRequest:
    """What an ID token is issued for: who, to whom, when and for how long."""

    issuer: str
    audience: str
    client_id: str
    certificate: ClientCertificate
    issued_at: int
    lifetime_seconds: int


def build_id_token_claims(request: IdTokenRequest) -> dict[str, Any]:
    """Build the claims of an ID token.

    ``client`` values are always strings, empty when a fact is absent, so that
    an attribute mapping such as ``assertion.client.x5_spiffe`` always
    evaluates. ``x5_dnssan`` and ``x5_urisan`` hold the first SAN only.
    """
    cert = request.certificate
    return {
        "iss": request.issuer,
        "aud": request.audience,
        "sub": request.client_id,
        "iat": request.issued_at,
        "exp": request.issued_at + request.lifetime_seconds,
        "jti": str(uuid.uuid4()),
        "amr": [XLB_MTLS_FLOW],
        "client_id": request.client_id,
        "client": {
            "x5_spiffe": cert.spiffe_id,
            "x5_dnssan": cert.dns_sans[0] if cert.dns_sans else "",
            "x5_urisan": cert.uri_sans[0] if cert.uri_sans else "",
            "x5_sha256": cert.sha256_fingerprint,
            "x5_serial": cert.serial_number,
        },
    }
