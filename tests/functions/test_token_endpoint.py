"""Tests for the token function through functions-framework's test client."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from shared.signing import LocalKeySigner
from tests.conftest import (
    CLIENT_DNS_SANS,
    CLIENT_SPIFFE_ID,
    CLIENT_URI_SANS,
    FORM_CONTENT_TYPE,
    ISSUER,
    TOKEN_AUDIENCE,
    XLB_MTLS_FLOW,
    AppFactory,
    ClientCertificateFacts,
    b64,
    post_token,
)

GRANT = "grant_type=client_credentials"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_BODY_BYTES = 8192

TokenClient = Callable[..., FlaskClient]


@pytest.fixture()
def token_client(
    make_client: AppFactory, service_env: dict[str, str]
) -> Callable[..., FlaskClient]:
    """Create the token function with the valid config plus overrides."""

    def make(**overrides: str) -> FlaskClient:
        env = {**service_env, **overrides}
        for name in [name for name, value in overrides.items() if value == ""]:
            env.pop(name)
        return make_client("token", env)

    return make


@pytest.fixture()
def client(token_client: TokenClient) -> FlaskClient:
    return token_client()


def jwks_of(make_client: AppFactory, env: Mapping[str, str]) -> dict[str, Any]:
    """Fetch the JWKS from the metadata function configured with ``env``."""
    response = make_client("metadata", env).get("/jwks")
    assert response.status_code == 200
    jwks = response.get_json()
    assert isinstance(jwks, dict)
    return jwks


def verify(token: str, jwks: Mapping[str, Any], issuer: str = ISSUER) -> dict[str, Any]:
    """Verify ``token`` against ``jwks`` as Workload Identity Federation would."""
    key = jwt.PyJWKSet.from_dict(dict(jwks))[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(
        token,
        key,
        algorithms=["RS256", "ES256"],
        audience=TOKEN_AUDIENCE,
        issuer=issuer,
        options={"require": ["iss", "aud", "sub", "iat", "exp", "jti"]},
    )
    assert isinstance(claims, dict)
    return claims


def issue(
    client: FlaskClient, headers: Mapping[str, str], body: str = GRANT
) -> dict[str, Any]:
    """Request a token that must be issued, and return the JSON body."""
    response = post_token(client, body, headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    payload = response.get_json()
    assert isinstance(payload, dict)
    return payload


def assert_no_store(response: TestResponse) -> None:
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert response.mimetype == "application/json"


def assert_oauth_error(response: TestResponse, status: int, error: str) -> None:
    assert response.status_code == status
    assert_no_store(response)
    body = response.get_json()
    assert isinstance(body, dict)
    assert body["error"] == error
    assert set(body) <= {"error", "error_description", "error_uri"}
    description = body.get("error_description", "")
    assert "Traceback" not in description
    assert not JWT_PATTERN.search(description)


# --- Issued tokens ---------------------------------------------------------


def test_token_issued_without_scope(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    response = post_token(client, GRANT, mtls_headers)
    assert response.status_code == 200
    assert_no_store(response)
    body = response.get_json()
    assert isinstance(body, dict)
    assert set(body) == {"id_token", "expires_in"}
    assert body["expires_in"] == 300


@pytest.mark.parametrize("key_name", ["rsa2048", "ec_p256"])
def test_token_verifies_with_jwks(
    make_client: AppFactory,
    service_env: dict[str, str],
    key_files: dict[str, Path],
    mtls_headers: dict[str, str],
    key_name: str,
) -> None:
    env = {**service_env, "SIGNING_KEY_FILE": str(key_files[key_name])}
    token = issue(make_client("token", env), mtls_headers)["id_token"]
    jwks = jwks_of(make_client, env)
    claims = verify(token, jwks)
    kids = {key["kid"] for key in jwks["keys"]}
    assert jwt.get_unverified_header(token)["kid"] in kids
    assert claims["sub"] == CLIENT_SPIFFE_ID


def test_issued_token_claims(
    make_client: AppFactory,
    service_env: dict[str, str],
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    before = int(time.time())
    token = issue(make_client("token", service_env), mtls_headers)["id_token"]
    claims = verify(token, jwks_of(make_client, service_env))
    assert claims["iss"] == ISSUER
    assert claims["aud"] == TOKEN_AUDIENCE
    assert claims["sub"] == CLIENT_SPIFFE_ID
    assert claims["client_id"] == CLIENT_SPIFFE_ID
    assert claims["amr"] == [XLB_MTLS_FLOW]
    assert type(claims["iat"]) is int
    assert type(claims["exp"]) is int
    assert before <= claims["iat"] <= int(time.time())
    assert claims["client"] == {
        "x5_spiffe": CLIENT_SPIFFE_ID,
        "x5_dnssan": CLIENT_DNS_SANS[0],
        "x5_urisan": CLIENT_URI_SANS[0],
        "x5_sha256": client_certificate.fingerprint,
        "x5_serial": client_certificate.serial,
        "x5_dnssans": list(CLIENT_DNS_SANS),
        "x5_urisans": list(CLIENT_URI_SANS),
    }


def test_token_header_fields(
    client: FlaskClient, mtls_headers: dict[str, str], key_files: dict[str, Path]
) -> None:
    header = jwt.get_unverified_header(issue(client, mtls_headers)["id_token"])
    signer = LocalKeySigner.from_files([key_files["rsa2048"]])
    assert header["alg"] == "RS256"
    assert header["kid"] == signer.active_kid
    assert header["typ"] == "JWT"


def test_jti_differs_per_token(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    first = jwt.decode(
        issue(client, mtls_headers)["id_token"], options={"verify_signature": False}
    )
    second = jwt.decode(
        issue(client, mtls_headers)["id_token"], options={"verify_signature": False}
    )
    assert first["jti"] != second["jti"]
    assert len(first["jti"]) >= 32


@pytest.mark.parametrize(
    ("validity", "seconds"),
    [("", 300), ("1", 60), ("5", 300), ("720", 43200)],
)
def test_lifetime_is_validity(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    validity: str,
    seconds: int,
) -> None:
    payload = issue(token_client(TOKEN_VALIDITY=validity), mtls_headers)
    claims = jwt.decode(payload["id_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == seconds
    assert payload["expires_in"] == seconds


def test_client_claim_strings_empty(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    headers = {
        "X-Client-Cert-Present": "true",
        "X-Client-Cert-Chain-Verified": "true",
        "X-Client-Cert-Spiffe": mtls_headers["X-Client-Cert-Spiffe"],
    }
    token = issue(client, headers)["id_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["client"] == {
        "x5_spiffe": CLIENT_SPIFFE_ID,
        "x5_dnssan": "",
        "x5_urisan": "",
        "x5_sha256": "",
        "x5_serial": "",
        "x5_dnssans": [],
        "x5_urisans": [],
    }


@pytest.mark.parametrize(
    ("client_id_header", "sans_header", "client_id"),
    [
        ("X-Client-Cert-Spiffe", None, CLIENT_SPIFFE_ID),
        # The whole-list reading of the LB's SAN format: one base64 part.
        (
            "X-Client-Cert-URI-SANs",
            b64(",".join(CLIENT_URI_SANS)),
            CLIENT_URI_SANS[0],
        ),
        (
            "X-Client-Cert-DNSName-SANs",
            b64(",".join(CLIENT_DNS_SANS)),
            CLIENT_DNS_SANS[0],
        ),
    ],
)
def test_client_id_from_header(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    client_id_header: str,
    sans_header: str | None,
    client_id: str,
) -> None:
    headers = dict(mtls_headers)
    if sans_header is not None:
        headers[client_id_header] = sans_header
    client = token_client(MTLS_HEADER_CLIENT_ID=client_id_header)
    claims = jwt.decode(
        issue(client, headers)["id_token"], options={"verify_signature": False}
    )
    assert claims["sub"] == client_id
    assert claims["client_id"] == client_id
    assert claims["client"]["x5_dnssan"] == CLIENT_DNS_SANS[0]


@pytest.mark.parametrize(
    "client_id_header", ["X-Client-Cert-URI-SANs", "X-Client-Cert-DNSName-SANs"]
)
def test_per_entry_san_client_id_refused(
    token_client: TokenClient, mtls_headers: dict[str, str], client_id_header: str
) -> None:
    # The fixture's SAN headers hold two per-entry parts, which cannot be
    # told apart from a header that arrived twice.
    client = token_client(MTLS_HEADER_CLIENT_ID=client_id_header)
    response = post_token(client, GRANT, mtls_headers)
    assert_oauth_error(response, 401, "invalid_client")


def test_client_id_from_fingerprint(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    client = token_client(MTLS_HEADER_CLIENT_ID="X-Client-Cert-Hash")
    claims = jwt.decode(
        issue(client, mtls_headers)["id_token"], options={"verify_signature": False}
    )
    assert claims["sub"] == client_certificate.fingerprint


def test_padded_fingerprint_unpadded(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    client = token_client(MTLS_HEADER_CLIENT_ID="X-Client-Cert-Hash")
    headers = {
        **mtls_headers,
        "X-Client-Cert-Hash": client_certificate.fingerprint + "=",
    }
    claims = jwt.decode(
        issue(client, headers)["id_token"], options={"verify_signature": False}
    )
    assert claims["sub"] == client_certificate.fingerprint


def test_overridden_headers_read(
    token_client: TokenClient, mtls_headers: dict[str, str]
) -> None:
    client = token_client(
        MTLS_HEADER_CLIENT_CERT_PRESENT="X-Mtls-Present",
        MTLS_HEADER_CLIENT_CERT_CHAIN_VERIFIED="X-Mtls-Verified",
    )
    headers = {**mtls_headers, "X-Mtls-Present": "true", "X-Mtls-Verified": "true"}
    del headers["X-Client-Cert-Present"]
    del headers["X-Client-Cert-Chain-Verified"]
    assert post_token(client, GRANT, headers).status_code == 200
    assert post_token(client, GRANT, mtls_headers).status_code == 401


@pytest.mark.parametrize("present", ["TRUE", " True ", "true"])
def test_true_case_insensitive(
    client: FlaskClient, mtls_headers: dict[str, str], present: str
) -> None:
    headers = {**mtls_headers, "X-Client-Cert-Present": present}
    headers["X-Client-Cert-Chain-Verified"] = present
    assert post_token(client, GRANT, headers).status_code == 200


def test_matching_client_id_accepted(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    body = f"{GRANT}&client_id={CLIENT_SPIFFE_ID}"
    assert post_token(client, body, mtls_headers).status_code == 200


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/x-www-form-urlencoded;charset=UTF-8",
    ],
)
def test_charset_parameter_accepted(
    client: FlaskClient, mtls_headers: dict[str, str], content_type: str
) -> None:
    response = post_token(client, GRANT, mtls_headers, content_type)
    assert response.status_code == 200


def test_latin1_charset_rejected(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    # Percent-decoded bytes are read as UTF-8, so a Latin-1 body cannot be
    # honoured.
    content_type = "application/x-www-form-urlencoded; charset=ISO-8859-1"
    response = post_token(client, GRANT, mtls_headers, content_type)
    assert_oauth_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded; charset=US-ASCII",
        "application/x-www-form-urlencoded; charset=ascii",
    ],
)
def test_ascii_charsets_accepted(
    client: FlaskClient, mtls_headers: dict[str, str], content_type: str
) -> None:
    response = post_token(client, GRANT, mtls_headers, content_type)
    assert response.status_code == 200


# --- External credential format --------------------------------------------


def test_external_credential_issued(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    response = post_token(client, f"{GRANT}&format=external_credential", mtls_headers)
    assert response.status_code == 200
    assert_no_store(response)
    body = response.get_json()
    assert isinstance(body, dict)
    assert body["version"] == 1
    assert body["success"] is True
    assert body["token_type"] == ID_TOKEN_TYPE
    claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert body["expiration_time"] == claims["exp"]
    assert body["expiration_time"] > time.time()
    assert set(body) == {
        "version",
        "success",
        "token_type",
        "id_token",
        "expiration_time",
    }


# --- Rejected requests -----------------------------------------------------


def _headers_without(headers: dict[str, str], *names: str) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name not in names}


REJECTIONS: list[Any] = [
    # (id, body, content type, header changes, status, error)
    ("no-grant-type", "scope=a", FORM_CONTENT_TYPE, {}, 400, "invalid_request"),
    ("empty-body", "", FORM_CONTENT_TYPE, {}, 400, "invalid_request"),
    ("empty-grant-type", "grant_type=", FORM_CONTENT_TYPE, {}, 400, "invalid_request"),
    (
        "repeated-grant",
        f"{GRANT}&{GRANT}",
        FORM_CONTENT_TYPE,
        {},
        400,
        "invalid_request",
    ),
    (
        "repeated-scope",
        f"{GRANT}&scope=a&scope=b",
        FORM_CONTENT_TYPE,
        {},
        400,
        "invalid_request",
    ),
    (
        "json-body",
        '{"grant_type":"client_credentials"}',
        "application/json",
        {},
        400,
        "invalid_request",
    ),
    ("no-content-type", GRANT, None, {}, 400, "invalid_request"),
    ("text-plain", GRANT, "text/plain", {}, 400, "invalid_request"),
    ("multipart", GRANT, "multipart/form-data; boundary=x", {}, 400, "invalid_request"),
    (
        "unknown-format",
        f"{GRANT}&format=jwt",
        FORM_CONTENT_TYPE,
        {},
        400,
        "invalid_request",
    ),
    (
        "nul-in-body",
        f"{GRANT}&scope=a%00",
        FORM_CONTENT_TYPE,
        {},
        400,
        "invalid_request",
    ),
    (
        "password-grant",
        "grant_type=password",
        FORM_CONTENT_TYPE,
        {},
        400,
        "unsupported_grant_type",
    ),
    (
        "token-exchange-grant",
        "grant_type=urn:ietf:params:oauth:grant-type:token-exchange",
        FORM_CONTENT_TYPE,
        {},
        400,
        "unsupported_grant_type",
    ),
    (
        "service-account-no-scope",
        f"{GRANT}&service_account=sa@p.iam.gserviceaccount.com",
        FORM_CONTENT_TYPE,
        {},
        400,
        "invalid_request",
    ),
    ("no-cert-headers", GRANT, FORM_CONTENT_TYPE, None, 401, "invalid_client"),
    (
        "cert-not-present",
        GRANT,
        FORM_CONTENT_TYPE,
        {"X-Client-Cert-Present": "false", "X-Client-Cert-Chain-Verified": "false"},
        401,
        "invalid_client",
    ),
    (
        "chain-not-verified",
        GRANT,
        FORM_CONTENT_TYPE,
        {
            "X-Client-Cert-Chain-Verified": "false",
            "X-Client-Cert-Error": "client_cert_chain_invalid_eku",
        },
        401,
        "invalid_client",
    ),
    (
        "verified-garbage",
        GRANT,
        FORM_CONTENT_TYPE,
        {"X-Client-Cert-Chain-Verified": "yes"},
        401,
        "invalid_client",
    ),
    (
        "verified-missing",
        GRANT,
        FORM_CONTENT_TYPE,
        {"X-Client-Cert-Chain-Verified": None},
        401,
        "invalid_client",
    ),
    (
        "empty-client-id",
        GRANT,
        FORM_CONTENT_TYPE,
        {"X-Client-Cert-Spiffe": ""},
        401,
        "invalid_client",
    ),
    (
        "joined-spiffe",
        GRANT,
        FORM_CONTENT_TYPE,
        {"X-Client-Cert-Spiffe": f"{CLIENT_SPIFFE_ID},spiffe://example.org/other"},
        401,
        "invalid_client",
    ),
    (
        "client-id-mismatch",
        f"{GRANT}&client_id=spiffe://example.org/other",
        FORM_CONTENT_TYPE,
        {},
        401,
        "invalid_client",
    ),
]


def _apply(
    headers: dict[str, str], changes: dict[str, str | None] | None
) -> dict[str, str]:
    if changes is None:
        return {}
    result = dict(headers)
    for name, value in changes.items():
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result


@pytest.mark.parametrize(
    ("body", "content_type", "changes", "status", "error"),
    [pytest.param(*case[1:], id=case[0]) for case in REJECTIONS],
)
def test_bad_request_rejected(
    client: FlaskClient,
    mtls_headers: dict[str, str],
    body: str,
    content_type: str | None,
    changes: dict[str, str | None] | None,
    status: int,
    error: str,
) -> None:
    response = post_token(client, body, _apply(mtls_headers, changes), content_type)
    assert_oauth_error(response, status, error)


@pytest.mark.parametrize(
    ("body", "content_type", "changes", "status", "error"),
    [
        pytest.param(*case[1:], id=case[0])
        for case in REJECTIONS
        # This body names a format of its own.
        if case[0] != "unknown-format"
    ],
)
def test_external_error_format(
    client: FlaskClient,
    mtls_headers: dict[str, str],
    body: str,
    content_type: str | None,
    changes: dict[str, str | None] | None,
    status: int,
    error: str,
) -> None:
    external_body = "&".join(filter(None, [body, "format=external_credential"]))
    response = post_token(
        client, external_body, _apply(mtls_headers, changes), content_type
    )
    assert response.status_code == status
    assert_no_store(response)
    payload = response.get_json()
    assert isinstance(payload, dict)
    assert payload["version"] == 1
    assert payload["success"] is False
    assert payload["code"] == error
    assert isinstance(payload["message"], str)
    assert set(payload) == {"version", "success", "code", "message"}


def test_repeated_format_external_error(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    body = f"{GRANT}&format=external_credential&format=external_credential"
    response = post_token(client, body, mtls_headers)
    assert response.status_code == 400
    payload = response.get_json()
    assert isinstance(payload, dict)
    assert payload["code"] == "invalid_request"


def test_encoded_format_external_error(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    response = post_token(client, f"{GRANT}&format=external%5Fcredential", {})
    assert response.status_code == 401
    payload = response.get_json()
    assert isinstance(payload, dict)
    assert payload["success"] is False
    assert payload["code"] == "invalid_client"


def test_json_format_rejected(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    response = post_token(client, f"{GRANT}&format=json", mtls_headers)
    assert_oauth_error(response, 400, "invalid_request")


def test_basic_auth_gets_challenge(client: FlaskClient) -> None:
    headers = {"Authorization": "Basic Y2xpZW50OnNlY3JldA=="}
    response = post_token(client, GRANT, headers)
    assert_oauth_error(response, 401, "invalid_client")
    assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_duplicate_spiffe_header_rejected(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    headers = list(_headers_without(mtls_headers, "X-Client-Cert-Spiffe").items())
    headers += [
        ("X-Client-Cert-Spiffe", CLIENT_SPIFFE_ID),
        ("X-Client-Cert-Spiffe", "spiffe://example.org/other"),
        ("Content-Type", FORM_CONTENT_TYPE),
    ]
    response = client.post("/token", data=GRANT, headers=headers)
    assert_oauth_error(response, 401, "invalid_client")


def test_duplicate_fingerprint_rejected(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    client = token_client(MTLS_HEADER_CLIENT_ID="X-Client-Cert-Hash")
    fingerprint = client_certificate.fingerprint
    headers = {**mtls_headers, "X-Client-Cert-Hash": f"{fingerprint},{fingerprint}"}
    assert_oauth_error(post_token(client, GRANT, headers), 401, "invalid_client")


# --- Body size -------------------------------------------------------------


def _body_of_size(size: int) -> str:
    prefix = f"{GRANT}&padding="
    return prefix + "x" * (size - len(prefix))


@pytest.mark.parametrize(
    ("size", "status"),
    [
        (MAX_BODY_BYTES - 1, 200),
        (MAX_BODY_BYTES, 200),  # the largest body accepted
        (MAX_BODY_BYTES + 1, 400),
        (MAX_BODY_BYTES * 4, 400),
    ],
)
def test_body_size_limit(
    client: FlaskClient, mtls_headers: dict[str, str], size: int, status: int
) -> None:
    body = _body_of_size(size)
    assert len(body.encode()) == size
    response = post_token(client, body, mtls_headers)
    assert response.status_code == status
    if status == 400:
        assert_oauth_error(response, 400, "invalid_request")


def test_streamed_body_over_limit(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    # No Content-Length: the limit must hold for what is read, too.
    body = _body_of_size(MAX_BODY_BYTES + 1).encode()
    response = client.post(
        "/token",
        input_stream=io.BytesIO(body),
        headers={**mtls_headers, "Content-Type": FORM_CONTENT_TYPE},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_oauth_error(response, 400, "invalid_request")


# --- Methods and paths -----------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_method_405(
    client: FlaskClient, mtls_headers: dict[str, str], method: str
) -> None:
    response = client.open("/token", method=method, headers=mtls_headers)
    assert_oauth_error(response, 405, "invalid_request")
    assert response.headers["Allow"] == "POST"


def test_head_405_allow_post(client: FlaskClient) -> None:
    response = client.head("/token")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    "path",
    [
        "/token/",
        "/tokens",
        "/Token",
        "/v1/token",
        "/.well-known/openid-configuration",
        # functions-framework routes these two to its own 404 view.
        "/robots.txt",
        "/favicon.ico",
    ],
)
def test_other_path_404(
    client: FlaskClient, mtls_headers: dict[str, str], path: str
) -> None:
    response = client.post(
        path, data=GRANT, headers={**mtls_headers, "Content-Type": FORM_CONTENT_TYPE}
    )
    assert_oauth_error(response, 404, "invalid_request")


def test_root_path_accepted_as_token(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    # A URL-mask load balancer may remove the /token segment it routed by.
    response = client.post(
        "/", data=GRANT, headers={**mtls_headers, "Content-Type": FORM_CONTENT_TYPE}
    )
    assert response.status_code == 200
    assert response.get_json()["id_token"]


# --- Unexpected failures ---------------------------------------------------

SECRET_FAILURE = "signer exploded eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln"


@pytest.fixture()
def broken_signer(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: LocalKeySigner, claims: Any, deadline: Any) -> str:
        raise RuntimeError(SECRET_FAILURE)

    monkeypatch.setattr(LocalKeySigner, "sign", fail)


@pytest.mark.usefixtures("broken_signer")
def test_unexpected_error_json(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    response = post_token(client, GRANT, mtls_headers)
    assert_oauth_error(response, 500, "server_error")
    text = response.get_data(as_text=True)
    assert "exploded" not in text
    assert "Traceback" not in text
    assert "<html" not in text.lower()


@pytest.mark.usefixtures("broken_signer")
def test_unexpected_error_external(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    response = post_token(client, f"{GRANT}&format=external_credential", mtls_headers)
    assert response.status_code == 500
    payload = response.get_json()
    assert isinstance(payload, dict)
    assert payload["success"] is False
    assert payload["code"] == "server_error"
    assert "exploded" not in payload["message"]


# --- Issuer from the Host header -------------------------------------------


def test_issuer_from_host(
    make_client: AppFactory,
    service_env: dict[str, str],
    mtls_headers: dict[str, str],
) -> None:
    env = {k: v for k, v in service_env.items() if k != "TOKEN_ISSUER"}
    headers = {**mtls_headers, "Host": "Broker.Example.com"}
    token = issue(make_client("token", env), headers)["id_token"]
    claims = verify(token, jwks_of(make_client, env), "https://broker.example.com")
    assert claims["iss"] == "https://broker.example.com"


def test_configured_issuer_ignores_host(
    client: FlaskClient, mtls_headers: dict[str, str]
) -> None:
    headers = {**mtls_headers, "Host": "attacker.example.com"}
    token = issue(client, headers)["id_token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] == ISSUER


def test_bad_host_rejected(
    token_client: TokenClient, mtls_headers: dict[str, str]
) -> None:
    client = token_client(TOKEN_ISSUER="")
    headers = {**mtls_headers, "Host": "bad host"}
    assert_oauth_error(post_token(client, GRANT, headers), 400, "invalid_request")
