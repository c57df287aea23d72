"""OpenID Connect discovery metadata for this issuer.

Workload Identity Federation fetches ``ISSUER/.well-known/openid-configuration``
and then the JWKS at its ``jwks_uri``. OIDC Discovery 1.0 §4.3 requires the
document's ``issuer`` to equal the issuer in the tokens byte for byte, so both
come from ``resolve_issuer``.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any
from urllib.parse import urlsplit

from shared.errors import InvalidRequestError

_LOGGER = logging.getLogger(__name__)

OPENID_CONFIGURATION = "/.well-known/openid-configuration"
OAUTH_AUTHORIZATION_SERVER = "/.well-known/oauth-authorization-server"
JWKS_PATH = "/jwks"
TOKEN_PATH = "/token"

# A DNS name or IPv4 address with an optional port, or a bracketed IPv6
# address: what a Host header may hold before it becomes part of an issuer.
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?::\d{1,5})?"
    r"|\[[0-9A-Fa-f:.]+\](?::\d{1,5})?"
)


def resolve_issuer(configured: str | None, host: str | None) -> str:
    """Return the configured issuer, or ``https://`` plus the request's Host.

    Raises:
        InvalidRequestError: No issuer is configured and the Host header is
            missing or not a host name.
    """
    if configured:
        return configured
    host = (host or "").strip()
    if not _HOST.fullmatch(host):
        raise InvalidRequestError(
            "The Host header is missing or invalid.", reason="invalid_host"
        )
    return "https://" + host.lower()


def issuer_path(issuer: str) -> str:
    """Return the issuer's path, without a trailing slash (often empty)."""
    return urlsplit(issuer).path.rstrip("/")


def first_segment(path: str) -> str:
    """Return the first segment of ``path`` with its slash, or "" for the root."""
    segment = path.split("/")[1] if path.startswith("/") else ""
    return "/" + segment if segment else ""


def routed_paths(path: str, segment: str) -> tuple[str, ...]:
    """Return the public paths that a function's request path may represent.

    A serverless NEG with the URL mask ``/<service>`` picks the function by the
    first path segment. The Google pages on URL masks show how the mask finds
    the service, but not whether that segment is still in the path the function
    receives. So a function accepts both forms: the path as sent
    (``/metadata/jwks``), and, when ``segment`` is missing from it, the path
    with ``segment`` restored (``/jwks`` is read as ``/metadata/jwks``).
    """
    if not segment or path == segment or path.startswith(segment + "/"):
        return (path,)
    return (path, segment + ("" if path == "/" else path))


def origin(issuer: str) -> str:
    """Return the scheme and authority of the issuer."""
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}"


def discovery_document(
    issuer: str, jwks_uri: str, algorithms: tuple[str, ...]
) -> dict[str, Any]:
    """Build the provider metadata (OIDC Discovery 1.0 §3, RFC 8414 §2).

    There is no authorization endpoint, but OIDC Discovery requires the
    field, so it repeats the token endpoint.
    """
    token_endpoint = origin(issuer) + TOKEN_PATH
    return {
        "issuer": issuer,
        "authorization_endpoint": token_endpoint,
        "token_endpoint": token_endpoint,
        "jwks_uri": jwks_uri,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(algorithms),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["tls_client_auth"],
        "tls_client_certificate_bound_access_tokens": False,
    }


class IssuerResolver:
    """Resolves each request's issuer, warning once when it comes from Host."""

    def __init__(self, configured: str | None) -> None:
        self._configured = configured
        self._lock = threading.Lock()
        self._warned = False

    def resolve(self, host: str | None) -> str:
        """Return the issuer for a request with this Host header.

        Raises:
            InvalidRequestError: See ``resolve_issuer``.
        """
        issuer = resolve_issuer(self._configured, host)
        if self._configured is None and not self._warned:
            self._warn(issuer)
        return issuer

    def _warn(self, issuer: str) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        _LOGGER.warning(
            "TOKEN_ISSUER is not set, so the issuer %s comes from the Host "
            "header; set TOKEN_ISSUER to the public URL so that the issuer "
            "cannot change with the Host a client sends",
            issuer,
            extra={"labels": {"event": "config.issuer_from_host"}},
        )
