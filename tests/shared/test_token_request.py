"""Tests for shared.token_request: RFC 6749 parsing of POST /token bodies."""

from __future__ import annotations

import pytest

from shared.errors import (
    InvalidRequestError,
    InvalidScopeError,
    OAuthError,
    UnsupportedGrantTypeError,
)
from shared.token_request import (
    MAX_BODY_BYTES,
    TokenRequest,
    check_content_type,
    parse_token_request,
    requests_external_credential,
)

GRANT = "grant_type=client_credentials"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded",
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/x-www-form-urlencoded;charset=UTF-8",
        'application/x-www-form-urlencoded; charset="utf-8"',
        "application/x-www-form-urlencoded; charset=utf8",
    ],
)
def test_form_content_type_accepted(content_type: str) -> None:
    check_content_type(content_type)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "application/json",
        "multipart/form-data; boundary=x",
        "text/plain",
        "application/x-www-form-urlencoded; boundary=x",
        "application/x-www-form-urlencoded; charset=utf-16",
    ],
)
def test_other_content_type_rejected(content_type: str | None) -> None:
    with pytest.raises(InvalidRequestError):
        check_content_type(content_type)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GRANT, TokenRequest()),
        (f"{GRANT}&scope=", TokenRequest()),  # an empty value counts as omitted
        (
            f"{GRANT}&scope=a+b%20a",
            TokenRequest(scopes=("a", "b")),
        ),
        (
            f"{GRANT}&scope=https://www.googleapis.com/auth/cloud-platform"
            "&service_account=sa@p.iam.gserviceaccount.com",
            TokenRequest(
                scopes=("https://www.googleapis.com/auth/cloud-platform",),
                service_account="sa@p.iam.gserviceaccount.com",
            ),
        ),
        (
            f"{GRANT}&format=external_credential",
            TokenRequest(response_format="external_credential"),
        ),
        (f"{GRANT}&client_id=abc", TokenRequest(client_id="abc")),
        (f"{GRANT}&unknown=1", TokenRequest()),
    ],
)
def test_form_body_parsed(body: str, expected: TokenRequest) -> None:
    assert parse_token_request(body.encode()) == expected


@pytest.mark.parametrize(
    ("body", "error", "reason"),
    [
        (b"", InvalidRequestError, "missing_grant_type"),
        (b"scope=a", InvalidRequestError, "missing_grant_type"),
        (b"grant_type=", InvalidRequestError, "missing_grant_type"),
        (f"{GRANT}&{GRANT}".encode(), InvalidRequestError, "repeated_parameter"),
        (
            f"{GRANT}&scope=a&scope=b".encode(),
            InvalidRequestError,
            "repeated_parameter",
        ),
        (f"{GRANT}&x=1&x=2".encode(), InvalidRequestError, "repeated_parameter"),
        (b"grant_type=password", UnsupportedGrantTypeError, "unsupported_grant_type"),
        (
            b"grant_type=Client_Credentials",
            UnsupportedGrantTypeError,
            "unsupported_grant_type",
        ),
        (f"{GRANT}&format=jwt".encode(), InvalidRequestError, "unknown_format"),
        (f"{GRANT}&scope=a%22b".encode(), InvalidScopeError, "malformed_scope"),
        (f"{GRANT}&scope=a++b".encode(), InvalidScopeError, "malformed_scope"),
        (
            f"{GRANT}&scope=a&service_account=nobody".encode(),
            InvalidRequestError,
            "malformed_service_account",
        ),
        (b"grant_type=client_credentials%00", InvalidRequestError, "malformed_body"),
        (b"grant_type=client_credentials\xff", InvalidRequestError, "malformed_body"),
        (b"grant_type", InvalidRequestError, "malformed_body"),
        (b"&".join([b"a=1"] * 17), InvalidRequestError, "malformed_body"),
        (b"x" * (MAX_BODY_BYTES + 1), InvalidRequestError, "body_too_large"),
    ],
)
def test_bad_body_rejected(body: bytes, error: type[OAuthError], reason: str) -> None:
    with pytest.raises(error) as caught:
        parse_token_request(body)
    assert caught.value.reason == reason


def test_repeated_unknown_name_hidden() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_token_request(b"grant_type=client_credentials&eyJhbGci=1&eyJhbGci=2")
    assert "eyJ" not in caught.value.description


@pytest.mark.parametrize(
    ("body", "external"),
    [
        (b"format=external_credential", True),
        (b"grant_type=x&format=external_credential&scope=a", True),
        (b"format=json", False),
        (b"xformat=external_credential", False),
        (b"format=external_credentials", False),
        (b"format=external%5Fcredential", True),
        (b"scope=a+b&format=external_credential", True),
    ],
)
def test_external_format_detected(body: bytes, external: bool) -> None:
    assert requests_external_credential(body) is external
