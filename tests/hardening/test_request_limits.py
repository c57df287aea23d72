"""Request-size limits, tested on both sides of each bound through gunicorn.

The body limit is the token function's own (``MAX_BODY_BYTES``). The header
limits are gunicorn's defaults, which functions-framework 3.10.2 leaves in
place: a header line of at most 8190 bytes counting its CRLF, and at most 100
header fields. functions-framework sets ``limit_request_line`` to 0, which
turns gunicorn's request-line limit off. gunicorn responds to the requests it
rejects with its own text/html page, before the function runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from shared.token_request import MAX_BODY_BYTES
from tests.hardening.conftest import (
    FunctionServer,
    HeaderList,
    RawResponse,
    form_headers,
    raw_request,
)

GRANT = b"grant_type=client_credentials"
# gunicorn 27.0.1 defaults (gunicorn/config.py): limit_request_field_size
# counts the whole line, name, ": ", value and CRLF.
GUNICORN_FIELD_LINE_BYTES = 8190
GUNICORN_MAX_FIELDS = 100
PADDING_NAME = "X-Padding"


def padded_body(size: int) -> bytes:
    """Return a valid token request body of exactly ``size`` bytes.

    The endpoint ignores the padding parameter, which it does not read.
    """
    prefix = GRANT + b"&padding="
    assert size >= len(prefix)
    return prefix + b"a" * (size - len(prefix))


def header_of_line_length(name: str, line_bytes: int, prefix: str = "") -> str:
    """Return a value that makes ``name: value`` plus CRLF ``line_bytes`` long."""
    value_length = line_bytes - len(name) - len(": ") - len("\r\n")
    return prefix + "a" * (value_length - len(prefix))


def post(
    server: FunctionServer,
    mtls_headers: Mapping[str, str],
    body: bytes = GRANT,
    extra: HeaderList = (),
    target: str = "/token",
) -> RawResponse:
    """POST ``body`` with the mTLS headers, then ``extra``, to the server."""
    headers = form_headers(server.port, body, [*mtls_headers.items(), *extra])
    return raw_request(server.port, "POST", target, headers, body)


def assert_token_issued(response: RawResponse) -> None:
    assert response.status == 200, response.body[:300]
    assert response.headers["Cache-Control"] == "no-store"
    assert "id_token" in response.json()


def assert_oauth_error(response: RawResponse, status: int, error: str) -> None:
    assert response.status == status, response.body[:300]
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    assert "id_token" not in body


def assert_rejected_by_gunicorn(response: RawResponse, status: int) -> None:
    assert response.status == status, response.body[:300]
    # gunicorn's own error page, not the function's JSON.
    assert response.headers["Content-Type"] == "text/html"
    assert b"id_token" not in response.body


# --- Body ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "accepted"),
    [
        (MAX_BODY_BYTES, True),  # exactly the limit: read and parsed
        (MAX_BODY_BYTES + 1, False),  # one byte over: invalid_request
    ],
)
def test_body_size_bound_content_length(
    token_server: FunctionServer,
    mtls_headers: dict[str, str],
    size: int,
    accepted: bool,
) -> None:
    response = post(token_server, mtls_headers, padded_body(size))
    if accepted:
        assert_token_issued(response)
    else:
        assert_oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    ("size", "accepted"),
    [
        (MAX_BODY_BYTES, True),  # exactly the limit, with no Content-Length
        (MAX_BODY_BYTES + 1, False),  # one byte over, counted while reading
    ],
)
def test_body_size_bound_chunked(
    token_server: FunctionServer,
    mtls_headers: dict[str, str],
    size: int,
    accepted: bool,
) -> None:
    body = padded_body(size)
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    headers: HeaderList = [
        ("Host", f"127.0.0.1:{token_server.port}"),
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "close"),
        *mtls_headers.items(),
    ]
    response = raw_request(token_server.port, "POST", "/token", headers, chunked)
    if accepted:
        assert_token_issued(response)
    else:
        assert_oauth_error(response, 400, "invalid_request")


def test_declared_length_over_limit_rejected(
    token_server: FunctionServer, mtls_headers: dict[str, str]
) -> None:
    # The function rejects the request on its declared length, without
    # reading the body. functions-framework reads the body afterwards.
    body = padded_body(4 * MAX_BODY_BYTES)
    response = post(token_server, mtls_headers, body)
    assert_oauth_error(response, 400, "invalid_request")


# --- Header field size -----------------------------------------------------


@pytest.mark.parametrize(
    ("line_bytes", "accepted"),
    [
        (GUNICORN_FIELD_LINE_BYTES, True),  # at gunicorn's limit
        (GUNICORN_FIELD_LINE_BYTES + 1, False),  # one byte over: 431
    ],
)
def test_header_field_size_bound(
    token_server: FunctionServer,
    mtls_headers: dict[str, str],
    line_bytes: int,
    accepted: bool,
) -> None:
    padding = header_of_line_length(PADDING_NAME, line_bytes)
    response = post(token_server, mtls_headers, extra=[(PADDING_NAME, padding)])
    if accepted:
        assert_token_issued(response)
    else:
        assert_rejected_by_gunicorn(response, 431)


def test_identity_header_at_field_limit_invalid_client(
    token_server: FunctionServer, mtls_headers: dict[str, str]
) -> None:
    # A SPIFFE ID that gunicorn still passes on is far over the 2048 bytes
    # the load balancer forwards, so it is malformed and names no client.
    name = "X-Client-Cert-Spiffe"
    value = header_of_line_length(name, GUNICORN_FIELD_LINE_BYTES, "spiffe://a/")
    headers = {**mtls_headers, name: value}
    response = post(token_server, headers)
    assert_oauth_error(response, 401, "invalid_client")


# --- Number of header fields -----------------------------------------------


@pytest.mark.parametrize(
    ("fields", "accepted"),
    [
        (GUNICORN_MAX_FIELDS, True),  # at gunicorn's limit
        (GUNICORN_MAX_FIELDS + 1, False),  # one field over: 431
    ],
)
def test_header_field_count_bound(
    token_server: FunctionServer,
    mtls_headers: dict[str, str],
    fields: int,
    accepted: bool,
) -> None:
    base = form_headers(token_server.port, GRANT, list(mtls_headers.items()))
    filler = [(f"X-Filler-{index}", "x") for index in range(fields - len(base))]
    headers = [*base, *filler]
    assert len(headers) == fields
    response = raw_request(token_server.port, "POST", "/token", headers, GRANT)
    if accepted:
        assert_token_issued(response)
    else:
        assert_rejected_by_gunicorn(response, 431)


# --- Request line ----------------------------------------------------------


def test_request_line_unbounded_by_gunicorn(
    token_server: FunctionServer, mtls_headers: dict[str, str]
) -> None:
    # functions-framework passes limit_request_line=0, so a request line
    # twice gunicorn's 8190-byte maximum still reaches the function, which
    # answers an unknown path with its JSON 404. The load balancer in front
    # must bound the URL.
    target = "/" + "a" * (2 * GUNICORN_FIELD_LINE_BYTES)
    response = post(token_server, mtls_headers, target=target)
    assert_oauth_error(response, 404, "invalid_request")
