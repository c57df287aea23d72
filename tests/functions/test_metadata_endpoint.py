"""Tests for the metadata function: OIDC discovery, the JWKS and redirects."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.conftest import (
    ISSUER,
    AppFactory,
    labels_of,
    log_entries,
    post_token,
)

DISCOVERY = "/.well-known/openid-configuration"
AUTHORIZATION_SERVER = "/.well-known/oauth-authorization-server"
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")
GRANT = "grant_type=client_credentials"

MetadataClient = Callable[..., FlaskClient]


@pytest.fixture()
def metadata_client(
    make_client: AppFactory, service_env: dict[str, str]
) -> MetadataClient:
    """Create the metadata function with the valid config plus overrides."""

    def make(**overrides: str) -> FlaskClient:
        env = {**service_env, **overrides}
        for name in [name for name, value in overrides.items() if value == ""]:
            env.pop(name)
        return make_client("metadata", env)

    return make


def json_of(response: TestResponse) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body, dict)
    return body


def max_age(response: TestResponse) -> int:
    match = re.search(r"max-age=(\d+)", response.headers.get("Cache-Control", ""))
    assert match, response.headers
    return int(match[1])


# --- Discovery document ----------------------------------------------------


@pytest.mark.parametrize("path", [DISCOVERY, AUTHORIZATION_SERVER])
def test_discovery_document_served(metadata_client: MetadataClient, path: str) -> None:
    document = json_of(metadata_client().get(path))
    assert document["issuer"] == ISSUER
    assert document["token_endpoint"] == ISSUER + "/token"
    assert document["authorization_endpoint"] == document["token_endpoint"]
    assert document["jwks_uri"] == ISSUER + "/jwks"
    assert document["response_types_supported"] == ["id_token"]
    assert document["subject_types_supported"] == ["public"]
    assert document["grant_types_supported"] == ["client_credentials"]
    assert document["token_endpoint_auth_methods_supported"] == ["tls_client_auth"]
    assert document["id_token_signing_alg_values_supported"] == ["RS256"]


def test_discovery_document_cacheable(metadata_client: MetadataClient) -> None:
    response = metadata_client().get(DISCOVERY)
    assert max_age(response) > 0
    assert "no-store" not in response.headers["Cache-Control"]


def test_algorithms_follow_keys(
    metadata_client: MetadataClient, key_files: dict[str, Path]
) -> None:
    keys = f"{key_files['rsa2048']},{key_files['ec_p256']}"
    document = json_of(metadata_client(SIGNING_KEY_FILE=keys).get(DISCOVERY))
    assert document["id_token_signing_alg_values_supported"] == ["RS256", "ES256"]


def test_jwks_uri_override(metadata_client: MetadataClient) -> None:
    uri = "https://keys.example.com/jwks.json"
    document = json_of(metadata_client(JWKS_URI=uri).get(DISCOVERY))
    assert document["jwks_uri"] == uri


def test_root_redirects_to_discovery(metadata_client: MetadataClient) -> None:
    response = metadata_client().get("/")
    assert response.status_code == 307
    assert response.headers["Location"] == ISSUER + DISCOVERY


# --- JWKS ------------------------------------------------------------------


def test_jwks_public_keys(
    metadata_client: MetadataClient, key_files: dict[str, Path]
) -> None:
    keys = f"{key_files['rsa2048']},{key_files['ec_p256']}"
    response = metadata_client(SIGNING_KEY_FILE=keys).get("/jwks")
    jwks = json_of(response)
    assert [key["kty"] for key in jwks["keys"]] == ["RSA", "EC"]
    for key in jwks["keys"]:
        for member in PRIVATE_MEMBERS:
            assert member not in key
        assert key["use"] == "sig"
    assert max_age(response) > 0


def test_jwks_kid_matches_token(
    make_client: AppFactory,
    service_env: dict[str, str],
    key_files: dict[str, Path],
    mtls_headers: dict[str, str],
) -> None:
    env = {
        **service_env,
        "SIGNING_KEY_FILE": f"{key_files['rsa2048']},{key_files['rsa2048_next']}",
    }
    response = post_token(make_client("token", env), GRANT, mtls_headers)
    token = response.get_json()["id_token"]
    jwks = json_of(make_client("metadata", env).get("/jwks"))
    kids = [key["kid"] for key in jwks["keys"]]
    assert len(kids) == 2
    # The last key listed signs, and the retired one stays published.
    assert jwt.get_unverified_header(token)["kid"] == kids[-1]


def test_no_jwks_with_iam_signer(
    metadata_client: MetadataClient,
) -> None:
    client = metadata_client(
        SIGNING_KEY_FILE="",
        SERVICE_ACCOUNT_EMAIL="broker@my-project.iam.gserviceaccount.com",
    )
    document = json_of(client.get(DISCOVERY))
    assert document["jwks_uri"] == (
        "https://www.googleapis.com/service_accounts/v1/metadata/jwk/"
        "broker@my-project.iam.gserviceaccount.com"
    )
    assert client.get("/jwks").status_code == 404


# --- Issuer with a path ----------------------------------------------------

PATH_ISSUER = "https://token.example.com/metadata"


@pytest.fixture()
def path_client(metadata_client: MetadataClient) -> FlaskClient:
    return metadata_client(TOKEN_ISSUER=PATH_ISSUER)


@pytest.mark.parametrize(
    "path",
    [
        "/metadata" + DISCOVERY,
        "/metadata" + AUTHORIZATION_SERVER,
        AUTHORIZATION_SERVER + "/metadata",  # RFC 8414 §3 placement
    ],
)
def test_path_issuer_discovery(path_client: FlaskClient, path: str) -> None:
    document = json_of(path_client.get(path))
    assert document["issuer"] == PATH_ISSUER
    assert document["token_endpoint"] == "https://token.example.com/token"
    assert document["jwks_uri"] == PATH_ISSUER + "/jwks"


def test_path_issuer_jwks(path_client: FlaskClient) -> None:
    assert json_of(path_client.get("/metadata/jwks"))["keys"]


@pytest.mark.parametrize("path", ["/metadata", "/metadata/"])
def test_path_issuer_redirects(path_client: FlaskClient, path: str) -> None:
    response = path_client.get(path)
    assert response.status_code == 307
    assert response.headers["Location"] == PATH_ISSUER + DISCOVERY


# A URL-mask load balancer may remove the /metadata segment it routed by, so
# each document is also served without it.
@pytest.mark.parametrize("path", [DISCOVERY, AUTHORIZATION_SERVER])
def test_path_issuer_discovery_without_segment(
    path_client: FlaskClient, path: str
) -> None:
    document = json_of(path_client.get(path))
    assert document["issuer"] == PATH_ISSUER
    assert document == json_of(path_client.get("/metadata" + path))


def test_path_issuer_jwks_without_segment(path_client: FlaskClient) -> None:
    assert json_of(path_client.get("/jwks")) == json_of(
        path_client.get("/metadata/jwks")
    )


def test_path_issuer_root_redirects(path_client: FlaskClient) -> None:
    response = path_client.get("/")
    assert response.status_code == 307
    assert response.headers["Location"] == PATH_ISSUER + DISCOVERY


@pytest.mark.parametrize(
    "path", ["/nope", "/metadata/nope", "/jwks.json", "/other" + DISCOVERY]
)
def test_path_issuer_unknown_path_404(path_client: FlaskClient, path: str) -> None:
    response = path_client.get(path)
    assert response.status_code == 404
    assert response.get_json()["error"] == "invalid_request"


# --- Issuer from the Host header -------------------------------------------


def test_host_issuer_document(metadata_client: MetadataClient) -> None:
    client = metadata_client(TOKEN_ISSUER="")
    document = json_of(client.get(DISCOVERY, headers={"Host": "Broker.Example.com"}))
    assert document["issuer"] == "https://broker.example.com"
    assert document["token_endpoint"] == "https://broker.example.com/token"


def test_host_issuer_matches_token(
    make_client: AppFactory,
    service_env: dict[str, str],
    mtls_headers: dict[str, str],
) -> None:
    env = {k: v for k, v in service_env.items() if k != "TOKEN_ISSUER"}
    host = {"Host": "broker.example.com:8443"}
    response = post_token(make_client("token", env), GRANT, {**mtls_headers, **host})
    token = response.get_json()["id_token"]
    document = json_of(make_client("metadata", env).get(DISCOVERY, headers=host))
    claims = jwt.decode(token, options={"verify_signature": False})
    assert document["issuer"] == claims["iss"]


def test_configured_issuer_matches_token(
    make_client: AppFactory,
    service_env: dict[str, str],
    mtls_headers: dict[str, str],
) -> None:
    env = {**service_env, "TOKEN_ISSUER": "https://token.example.com/metadata/"}
    response = post_token(make_client("token", env), GRANT, mtls_headers)
    token = response.get_json()["id_token"]
    document = json_of(make_client("metadata", env).get("/metadata" + DISCOVERY))
    claims = jwt.decode(token, options={"verify_signature": False})
    assert document["issuer"] == claims["iss"]
    assert not claims["iss"].endswith("/")


def test_host_issuer_warns_once(
    metadata_client: MetadataClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client = metadata_client(TOKEN_ISSUER="")
    capsys.readouterr()
    for _ in range(3):
        json_of(client.get(DISCOVERY, headers={"Host": "broker.example.com"}))
    warnings = [
        entry
        for entry in log_entries(capsys.readouterr().out)
        if entry["severity"] == "WARNING"
    ]
    assert len(warnings) == 1
    assert "TOKEN_ISSUER" in warnings[0]["message"]


def test_token_host_warns_once(
    make_client: AppFactory,
    service_env: dict[str, str],
    mtls_headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {k: v for k, v in service_env.items() if k != "TOKEN_ISSUER"}
    client = make_client("token", env)
    capsys.readouterr()
    for _ in range(3):
        assert post_token(client, GRANT, mtls_headers).status_code == 200
    warnings = [
        entry
        for entry in log_entries(capsys.readouterr().out)
        if entry["severity"] == "WARNING"
    ]
    assert len(warnings) == 1
    assert "TOKEN_ISSUER" in warnings[0]["message"]
    assert labels_of(warnings[0])["event"] == "config.issuer_from_host"


def test_rejection_logs_one_entry(
    metadata_client: MetadataClient, capsys: pytest.CaptureFixture[str]
) -> None:
    client = metadata_client()
    capsys.readouterr()
    client.get("/unknown")
    entries = log_entries(capsys.readouterr().out)
    assert len(entries) == 1
    assert labels_of(entries[0])["event"] == "metadata.refused"
    assert labels_of(entries[0])["reason"] == "unknown_path"


def test_bad_host_rejected(metadata_client: MetadataClient) -> None:
    response = metadata_client(TOKEN_ISSUER="").get(
        DISCOVERY, headers={"Host": "bad host"}
    )
    assert response.status_code == 400
    assert response.get_json() == {
        "error": "invalid_request",
        "error_description": "The Host header is missing or invalid.",
    }


# --- Other methods and paths -----------------------------------------------


@pytest.mark.parametrize("path", ["/token", "/jwks.json", "/metadata" + DISCOVERY])
def test_unknown_path_404(metadata_client: MetadataClient, path: str) -> None:
    response = metadata_client().get(path)
    assert response.status_code == 404
    body = response.get_json()
    assert isinstance(body, dict)
    assert body["error"] == "invalid_request"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_other_method_405(metadata_client: MetadataClient, method: str) -> None:
    response = metadata_client().open(DISCOVERY, method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    body = response.get_json()
    assert isinstance(body, dict)
    assert body["error"] == "invalid_request"


def test_head_discovery_no_body(metadata_client: MetadataClient) -> None:
    response = metadata_client().head(DISCOVERY)
    assert response.status_code == 200
    assert response.get_data() == b""


def test_post_unknown_path_404(metadata_client: MetadataClient) -> None:
    # Behind the root layout every path but /token reaches this function, so
    # an unknown path is a 404 whatever the method.
    response = metadata_client().post("/nope")
    assert response.status_code == 404
    assert response.get_json()["error"] == "invalid_request"


def test_redirect_body_json(metadata_client: MetadataClient) -> None:
    response = metadata_client().get("/", headers={"Host": "broker.example.com"})
    assert response.status_code == 307
    assert response.mimetype == "application/json"
    assert response.get_json()["location"] == response.headers["Location"]


def test_jwks_has_no_key_ops(metadata_client: MetadataClient) -> None:
    # RFC 7517 §4.3: "use" and "key_ops" should not be used together.
    response = metadata_client().get("/jwks", headers={"Host": "broker.example.com"})
    for key in response.get_json()["keys"]:
        assert "key_ops" not in key
        assert key["use"] == "sig"
