"""OAuth 2.0 error responses (RFC 6749 §5.2) as one exception hierarchy.

Each class fixes the wire ``error`` code and the HTTP status, so the mapping
lives here and nowhere else. ``description`` is client-visible and must be a
fixed sentence that names the failed check; the detail an operator needs goes
in ``reason`` and ``log_labels``, which only reach the server-side log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# RFC 6749 §5.2: error_description is limited to %x20-21 / %x23-5B / %x5D-7E,
# which excludes '"' and '\' and every non-ASCII or control character.
# An RFC 7230 token, the syntax of an authentication scheme's name.
_AUTH_SCHEME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
_DISALLOWED_DESCRIPTION_CHARS = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")
MAX_DESCRIPTION_LENGTH = 400


def safe_description(text: str, max_length: int = MAX_DESCRIPTION_LENGTH) -> str:
    """Return ``text`` reduced to RFC 6749 description characters and length."""
    cleaned = _DISALLOWED_DESCRIPTION_CHARS.sub("'", " ".join(text.split()))
    if len(cleaned) > max_length:
        cleaned = cleaned[: max_length - 3] + "..."
    return cleaned


class OAuthError(Exception):
    """Root of the errors that the token endpoint returns to clients.

    Attributes:
        error: The RFC 6749 §5.2 error code.
        status_code: The HTTP status of the response.
        description: Client-visible text, within RFC 6749's character set.
        reason: A short machine-readable cause for the log, such as
            ``certificate_not_verified``.
        log_labels: Extra non-secret labels for the log entry.
        detail: A log-only sentence for the operator, such as which header
            is missing and where to look.
    """

    error = "server_error"
    status_code = 500
    default_description = "The server failed to process the request."

    def __init__(
        self,
        description: str | None = None,
        *,
        reason: str = "",
        log_labels: Mapping[str, str] | None = None,
        detail: str = "",
    ) -> None:
        self.description = safe_description(description or self.default_description)
        self.reason = reason or self.error
        self.log_labels = dict(log_labels or {})
        self.detail = detail
        super().__init__(self.description)

    def headers(self) -> dict[str, str]:
        """Return extra response headers for this error."""
        return {}


class InvalidRequestError(OAuthError):
    """The request is missing a parameter, repeats one, or is malformed."""

    error = "invalid_request"
    status_code = 400
    default_description = "The request is malformed."


class NotFoundError(InvalidRequestError):
    """The path does not name an endpoint of this function."""

    status_code = 404
    default_description = "No endpoint exists at this path."


class MethodNotAllowedError(InvalidRequestError):
    """The endpoint exists but does not accept the request's method."""

    status_code = 405
    default_description = "The endpoint does not accept this HTTP method."

    def __init__(self, allowed: tuple[str, ...], **kwargs: object) -> None:
        self.allowed = allowed
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allowed)}


class InvalidClientError(OAuthError):
    """Client authentication failed: no verified certificate, or no client id.

    RFC 6749 §5.2 allows 401 here. Clients authenticate with TLS, so
    ``WWW-Authenticate`` is sent only when the request also tried an HTTP
    authentication scheme, which §5.2 then requires.
    """

    error = "invalid_client"
    status_code = 401
    default_description = "Client authentication failed."
    challenge_scheme: str | None = None

    def headers(self) -> dict[str, str]:
        if not self.challenge_scheme:
            return {}
        return {"WWW-Authenticate": f'{self.challenge_scheme} realm="token"'}


class InvalidGrantError(OAuthError):
    """The grant presented is invalid, expired or revoked."""

    error = "invalid_grant"
    status_code = 400


class UnauthorizedClientError(OAuthError):
    """The authenticated client may not use this grant or option."""

    error = "unauthorized_client"
    status_code = 400
    default_description = "The client is not authorized for this request."


class UnsupportedGrantTypeError(OAuthError):
    """The grant type is not ``client_credentials``."""

    error = "unsupported_grant_type"
    status_code = 400
    default_description = "Only the client_credentials grant type is supported."


class InvalidScopeError(OAuthError):
    """The requested scope is invalid, unknown or malformed."""

    error = "invalid_scope"
    status_code = 400
    default_description = "The requested scope is invalid."


class AccessDeniedError(OAuthError):
    """Google refused to issue a credential for this client."""

    error = "access_denied"
    status_code = 403
    default_description = "Access was denied."


class ServerError(OAuthError):
    """The service failed in a way the client cannot fix."""


class TemporarilyUnavailableError(OAuthError):
    """An upstream Google API is unavailable, slow or overloaded."""

    error = "temporarily_unavailable"
    status_code = 503
    default_description = "An upstream service is temporarily unavailable. Retry later."

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1"}


def challenge_scheme(authorization: str | None) -> str | None:
    """Return the scheme of an ``Authorization`` header, if it names one."""
    scheme = (authorization or "").strip().split(" ", 1)[0]
    return scheme if _AUTH_SCHEME.fullmatch(scheme) else None
