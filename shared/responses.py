"""JSON responses of the token endpoint, with the headers RFC 6749 requires.

Token and error responses carry ``Cache-Control: no-store`` and
``Pragma: no-cache`` (RFC 6749 §5.1). Errors use the RFC 6749 §5.2 body, or
the executable-sourced credential format's error body when the client asked
for that format.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import flask

from shared.errors import InvalidRequestError, NotFoundError, OAuthError, ServerError

_LOGGER = logging.getLogger(__name__)

NO_STORE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
EXECUTABLE_RESPONSE_VERSION = 1


def json_response(
    body: Mapping[str, Any],
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> flask.Response:
    """Serialize ``body`` as compact JSON with the given status and headers."""
    response = flask.Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        mimetype="application/json",
    )
    response.headers.update(headers or {})
    return response


def token_response(body: Mapping[str, Any]) -> flask.Response:
    """Return a successful token response that caches must not store."""
    return json_response(body, 200, NO_STORE_HEADERS)


def oauth_error_response(error: OAuthError) -> flask.Response:
    """Return the RFC 6749 §5.2 error body for ``error``."""
    body = {"error": error.error, "error_description": error.description}
    return json_response(
        body, error.status_code, {**NO_STORE_HEADERS, **error.headers()}
    )


def external_credential(id_token: str, expiration_time: int) -> flask.Response:
    """Return an ID token in the executable-sourced credential format."""
    return token_response(
        {
            "version": EXECUTABLE_RESPONSE_VERSION,
            "success": True,
            "token_type": ID_TOKEN_TYPE,
            "id_token": id_token,
            "expiration_time": expiration_time,
        }
    )


def external_credential_error(error: OAuthError) -> flask.Response:
    """Return ``error`` in the executable format, with the OAuth HTTP status."""
    body = {
        "version": EXECUTABLE_RESPONSE_VERSION,
        "success": False,
        "code": error.error,
        "message": error.description,
    }
    return json_response(
        body, error.status_code, {**NO_STORE_HEADERS, **error.headers()}
    )


def framework_error_response(
    status_code: int, labels: Mapping[str, str] | None = None
) -> flask.Response:
    """Return OAuth JSON for an error that Flask or functions-framework raised.

    functions-framework rejects ``/robots.txt`` and ``/favicon.ico`` itself
    with a 404 before the function runs, so this keeps those responses JSON.
    """
    error: OAuthError
    if status_code == 404:
        error = NotFoundError(reason="framework_not_found")
    elif 400 <= status_code < 500:
        error = InvalidRequestError(reason=f"framework_http_{status_code}")
        error.status_code = status_code
    else:
        error = ServerError(reason=f"framework_http_{status_code}")
    _LOGGER.warning(
        "Request refused before the function ran: %s (%s)",
        error.error,
        error.reason,
        extra={
            "labels": {
                **(labels or {}),
                "event": "request.refused",
                "error": error.error,
                "reason": error.reason,
                "path": flask.request.path[:200] if flask.has_request_context() else "",
            }
        },
    )
    return oauth_error_response(error)
