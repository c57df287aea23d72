"""The requests the benchmark sends, built from the local stack's demo PKI.

The certificate headers are computed by the development gateway's own code
from the demo client certificate, so the function receives exactly what the
gateway, standing in for the load balancer, would forward.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

from cryptography import x509

from bench.load import write_request_file
from deploy.local import gateway
from deploy.local.stack import REPO_ROOT, base_environment
from shared import lb_headers

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# A fixed trace header, as the load balancer adds one to every request.
TRACE_CONTEXT = "105445aa7843bc8bf206b12000100000/1;o=1"
PEER_CLIENT_ID = "demo-client"


def generate_pki(pki_dir: Path) -> None:
    """Create the demo PKI (CA, client certificate, signing key) if missing."""
    subprocess.run(
        [sys.executable, "-m", "deploy.local.pki", "--out", str(pki_dir)],
        cwd=REPO_ROOT,
        env=base_environment(),
        check=True,
        capture_output=True,
        timeout=120,
    )


def certificate_headers(pki_dir: Path) -> dict[str, str]:
    """Return the ten certificate headers for the demo client certificate."""
    leaf = _load_certificate(pki_dir / "client-cert.pem")
    ca = _load_certificate(pki_dir / "ca.pem")
    values = gateway.describe_client_certificate(
        leaf, [], gateway.client_policy_builder([ca]), "per-entry"
    )
    # The optional headers (subject DN, PEM chain) are off by default, as in
    # the deployment, so only the ten default headers are sent.
    names = lb_headers.header_names()
    return {names[key]: value for key, value in values.items() if key in names}


def load_balancer_headers(pki_dir: Path) -> dict[str, str]:
    """Return every header the token function receives behind the gateway."""
    return {
        "Content-Type": FORM_CONTENT_TYPE,
        **certificate_headers(pki_dir),
        "X-Forwarded-For": "127.0.0.1, 127.0.0.1",
        "X-Forwarded-Proto": "https",
        gateway.TRACE_HEADER: TRACE_CONTEXT,
    }


def token_body(scope: str | None = None) -> bytes:
    """Return a client-credentials body, with ``scope`` when given."""
    fields = {"grant_type": "client_credentials"}
    if scope is not None:
        fields["scope"] = scope
    return urlencode(fields).encode()


def write_token_request(path: Path, pki_dir: Path, scope: str | None = None) -> Path:
    """Write the wrk request for ``POST /token`` as the gateway forwards it."""
    return write_request_file(
        path, "POST", "/token", load_balancer_headers(pki_dir), token_body(scope)
    )


def write_peer_request(path: Path, pki_dir: Path) -> Path:
    """Write the wrk request for the peer: the certificate as escaped PEM.

    A TLS-terminating proxy passes the whole certificate this way (nginx's
    ``$ssl_client_escaped_cert``), and RFC 8705 §2 has the client send its
    ``client_id`` in the body.
    """
    pem = (pki_dir / "client-cert.pem").read_text()
    headers = {
        "Content-Type": FORM_CONTENT_TYPE,
        "X-Client-Cert": quote(pem, safe=""),
        "X-Client-Cert-Chain-Verified": "true",
    }
    body = urlencode(
        {"grant_type": "client_credentials", "client_id": PEER_CLIENT_ID}
    ).encode()
    return write_request_file(path, "POST", "/token", headers, body)


def _load_certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())
