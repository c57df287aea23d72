"""The ``metadata`` function: OIDC discovery and the JWKS, under the issuer's path.

Workload Identity Federation fetches these without a client certificate, so
nothing here looks at the certificate headers. An issuer with a path, such as
``https://host/metadata``, serves its discovery document at
``/metadata/.well-known/openid-configuration``. A URL-mask load balancer may
remove the ``/metadata`` segment, so the same document is also served at
``/.well-known/openid-configuration``.
"""

from __future__ import annotations

import logging

import flask

from shared import responses
from shared.config import Settings
from shared.discovery import (
    JWKS_PATH,
    OAUTH_AUTHORIZATION_SERVER,
    OPENID_CONFIGURATION,
    IssuerResolver,
    discovery_document,
    first_segment,
    issuer_path,
    routed_paths,
)
from shared.errors import MethodNotAllowedError, NotFoundError, OAuthError, ServerError
from shared.signing import Signer
from shared.structured_log import (
    RequestLogContext,
    exception_summary,
    parse_trace_context,
    request_context,
)

_LOGGER = logging.getLogger(__name__)
_ALLOWED_METHODS = ("GET", "HEAD")
# Short enough that a rotated key or a changed issuer shows up within minutes.
CACHE_CONTROL = "public, max-age=300"


class MetadataEndpoint:
    """Serves discovery metadata and, for a local signing key, the JWKS."""

    def __init__(self, settings: Settings, signer: Signer) -> None:
        self._settings = settings
        self._signer = signer
        self._issuers = IssuerResolver(settings.issuer)

    def handle(self, request: flask.Request) -> flask.Response:
        """Handle one metadata request and return its response; never raises."""
        context = RequestLogContext(trace=parse_trace_context(request.headers))
        with request_context(context):
            try:
                return self._route(request)
            except OAuthError as error:
                _LOGGER.info(
                    "Metadata request refused: %s (%s)",
                    error.error,
                    error.reason,
                    extra={
                        "labels": {
                            "event": "metadata.refused",
                            "reason": error.reason,
                            "path": request.path[:200],
                        }
                    },
                )
                return responses.oauth_error_response(error)
            except Exception as unexpected:
                _LOGGER.error(
                    "Metadata request failed unexpectedly: %s",
                    exception_summary(unexpected),
                    extra={"labels": {"event": "metadata.server_error"}},
                )
                return responses.oauth_error_response(ServerError())

    def _route(self, request: flask.Request) -> flask.Response:
        issuer = self._issuers.resolve(request.headers.get("Host"))
        base = issuer_path(issuer)
        jwks = self._signer.public_jwks()
        kind = None
        for path in routed_paths(request.path, first_segment(base)):
            kind = _document_kind(path, base, jwks is not None)
            if kind is not None:
                break
        if kind is None:
            raise NotFoundError(reason="unknown_path")
        if request.method not in _ALLOWED_METHODS:
            raise MethodNotAllowedError(_ALLOWED_METHODS, reason="method_not_allowed")

        if kind == "root":
            location = issuer + OPENID_CONFIGURATION
            return responses.json_response(
                {"location": location},
                307,
                {"Location": location, "Cache-Control": CACHE_CONTROL},
            )
        if kind == "jwks" and jwks is not None:
            return responses.json_response(jwks, 200, {"Cache-Control": CACHE_CONTROL})
        document = discovery_document(
            issuer, self._jwks_uri(issuer), self._signer.algorithms
        )
        return responses.json_response(document, 200, {"Cache-Control": CACHE_CONTROL})

    def _jwks_uri(self, issuer: str) -> str:
        return (
            self._settings.jwks_uri
            or self._signer.published_jwks_uri
            or issuer + JWKS_PATH
        )


def _document_kind(path: str, base: str, has_jwks: bool) -> str | None:
    """Return the kind of document ``path`` requests under the issuer path."""
    if path in (base, base + "/") or (not base and path == "/"):
        return "root"
    if has_jwks and path == base + JWKS_PATH:
        return "jwks"
    metadata_paths = {base + OPENID_CONFIGURATION, base + OAUTH_AUTHORIZATION_SERVER}
    if base:
        # RFC 8414 §3.1 inserts the well-known segment before the path.
        metadata_paths.add(OAUTH_AUTHORIZATION_SERVER + base)
    return "metadata" if path in metadata_paths else None
