"""Tests for shared.responses: JSON bodies and the headers RFC 6749 requires."""

from __future__ import annotations

import pytest

from shared.errors import (
    InvalidClientError,
    MethodNotAllowedError,
    TemporarilyUnavailableError,
)
from shared.responses import (
    external_credential,
    external_credential_error,
    framework_error_response,
    oauth_error_response,
    token_response,
)


def test_token_response_not_cached() -> None:
    response = token_response({"id_token": "x", "expires_in": 300})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.mimetype == "application/json"


def test_oauth_error_body() -> None:
    response = oauth_error_response(InvalidClientError())
    assert response.status_code == 401
    assert response.get_json() == {
        "error": "invalid_client",
        "error_description": "Client authentication failed.",
    }
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("error", "header", "value"),
    [
        (MethodNotAllowedError(("POST",)), "Allow", "POST"),
        (TemporarilyUnavailableError(), "Retry-After", "1"),
    ],
)
def test_error_headers_added(
    error: MethodNotAllowedError | TemporarilyUnavailableError, header: str, value: str
) -> None:
    assert oauth_error_response(error).headers[header] == value


def test_external_credential_body() -> None:
    response = external_credential("token", 1_700_000_300)
    assert response.get_json() == {
        "version": 1,
        "success": True,
        "token_type": "urn:ietf:params:oauth:token-type:id_token",
        "id_token": "token",
        "expiration_time": 1_700_000_300,
    }
    assert response.headers["Cache-Control"] == "no-store"


def test_external_error_keeps_status() -> None:
    response = external_credential_error(InvalidClientError())
    assert response.status_code == 401
    assert response.get_json() == {
        "version": 1,
        "success": False,
        "code": "invalid_client",
        "message": "Client authentication failed.",
    }


@pytest.mark.parametrize(
    ("status", "sent_status", "error"),
    [
        (404, 404, "invalid_request"),
        (405, 405, "invalid_request"),
        (413, 413, "invalid_request"),
        (500, 500, "server_error"),
        (502, 500, "server_error"),  # every server-side failure is a 500
    ],
)
def test_framework_error_json(status: int, sent_status: int, error: str) -> None:
    response = framework_error_response(status)
    body = response.get_json()
    assert response.status_code == sent_status
    assert isinstance(body, dict)
    assert body["error"] == error
    assert response.headers["Cache-Control"] == "no-store"
