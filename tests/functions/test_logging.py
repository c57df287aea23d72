"""Tests for the token function's log: one structured entry per decision.

In-process tests read the JSON lines from captured stdout. The execution-id
tests start functions-framework as a subprocess, because its LOG_EXECUTION_ID
mode reconfigures logging for the whole process.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from shared.signing import LocalKeySigner
from tests.conftest import (
    CLIENT_DNS_SANS,
    CLIENT_SPIFFE_ID,
    CLIENT_URI_SANS,
    FORM_CONTENT_TYPE,
    AppFactory,
    ClientCertificateFacts,
    FunctionStarter,
    labels_of,
    log_entries,
    post_token,
    wait_until_listening,
)

GRANT = "grant_type=client_credentials"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

TokenClient = Callable[..., FlaskClient]


@pytest.fixture()
def token_client(
    make_client: AppFactory, service_env: dict[str, str]
) -> Callable[..., FlaskClient]:
    """Create the token function with the valid config plus overrides."""

    def make(**overrides: str) -> FlaskClient:
        return make_client("token", {**service_env, **overrides})

    return make


def entries_of_request(
    capsys: pytest.CaptureFixture[str],
    client: FlaskClient,
    body: str,
    headers: dict[str, str],
    content_type: str | None = FORM_CONTENT_TYPE,
) -> list[dict[str, Any]]:
    """Send one token request and return the log entries it wrote."""
    capsys.readouterr()
    post_token(client, body, headers, content_type)
    return log_entries(capsys.readouterr().out)


# --- Issued tokens ---------------------------------------------------------


def test_issue_logs_one_entry(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    client_certificate: ClientCertificateFacts,
) -> None:
    entries = entries_of_request(capsys, token_client(), GRANT, mtls_headers)
    assert len(entries) == 1
    entry = entries[0]
    labels = labels_of(entry)
    assert entry["severity"] == "INFO"
    assert entry["message"]
    assert labels["event"] == "token.issued"
    assert labels["client_id"] == CLIENT_SPIFFE_ID
    assert labels["x5_spiffe"] == CLIENT_SPIFFE_ID
    assert labels["x5_sha256"] == client_certificate.fingerprint
    assert labels["x5_serial"] == client_certificate.serial
    assert labels["x5_dnssans"] == ",".join(CLIENT_DNS_SANS)
    assert labels["x5_urisans"] == ",".join(CLIENT_URI_SANS)
    assert labels["cert_chain_verified"] == "true"


@pytest.mark.parametrize(
    ("trace_headers", "span", "sampled"),
    [
        ({"X-Cloud-Trace-Context": f"{TRACE_ID}/74;o=1"}, "000000000000004a", True),
        (
            {"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-00"},
            "b7ad6b7169203331",
            False,
        ),
    ],
)
def test_trace_fields_with_project(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    trace_headers: dict[str, str],
    span: str,
    sampled: bool,
) -> None:
    client = token_client(GOOGLE_CLOUD_PROJECT="my-project")
    headers = {**mtls_headers, **trace_headers}
    (entry,) = entries_of_request(capsys, client, GRANT, headers)
    assert entry["logging.googleapis.com/trace"] == (
        f"projects/my-project/traces/{TRACE_ID}"
    )
    assert entry["logging.googleapis.com/spanId"] == span
    assert entry["logging.googleapis.com/trace_sampled"] is sampled


def test_no_trace_without_project(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    headers = {**mtls_headers, "X-Cloud-Trace-Context": f"{TRACE_ID}/74;o=1"}
    (entry,) = entries_of_request(capsys, token_client(), GRANT, headers)
    assert "logging.googleapis.com/trace" not in entry
    assert "logging.googleapis.com/spanId" not in entry


# --- Rejections --------------------------------------------------------------

LOGGED_REJECTIONS: list[Any] = [
    # (id, method, path, body, content type, header changes, reason)
    ("not-found", "POST", "/other", GRANT, FORM_CONTENT_TYPE, {}, "unknown_path"),
    ("method", "GET", "/token", "", None, {}, "method_not_allowed"),
    ("content-type", "POST", "/token", GRANT, "application/json", {}, None),
    ("no-grant", "POST", "/token", "scope=a", FORM_CONTENT_TYPE, {}, None),
    ("grant", "POST", "/token", "grant_type=password", FORM_CONTENT_TYPE, {}, None),
    (
        "too-large",
        "POST",
        "/token",
        "x" * 8193,
        FORM_CONTENT_TYPE,
        {},
        "body_too_large",
    ),
    (
        "no-headers",
        "POST",
        "/token",
        GRANT,
        FORM_CONTENT_TYPE,
        None,
        "mtls_headers_missing",
    ),
    (
        "unverified",
        "POST",
        "/token",
        GRANT,
        FORM_CONTENT_TYPE,
        {"X-Client-Cert-Chain-Verified": "false"},
        "certificate_not_verified",
    ),
    (
        "no-client-id",
        "POST",
        "/token",
        GRANT,
        FORM_CONTENT_TYPE,
        {"X-Client-Cert-Spiffe": ""},
        "client_id_missing",
    ),
    (
        "mismatch",
        "POST",
        "/token",
        f"{GRANT}&client_id=other",
        FORM_CONTENT_TYPE,
        {},
        "client_id_mismatch",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "changes", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in LOGGED_REJECTIONS],
)
def test_rejection_logs_one_entry(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    method: str,
    path: str,
    body: str,
    content_type: str | None,
    changes: dict[str, str] | None,
    reason: str | None,
) -> None:
    client = token_client()
    headers = {} if changes is None else {**mtls_headers, **changes}
    if content_type is not None:
        headers["Content-Type"] = content_type
    capsys.readouterr()
    client.open(path, method=method, data=body, headers=headers)
    entries = log_entries(capsys.readouterr().out)

    assert len(entries) == 1
    labels = labels_of(entries[0])
    assert entries[0]["severity"] == "WARNING"
    assert labels["event"] == "token.refused"
    assert labels["error"]
    assert labels["reason"]
    if reason is not None:
        assert labels["reason"] == reason


@pytest.mark.parametrize("path", ["/favicon.ico", "/robots.txt"])
def test_framework_404_logged(
    token_client: TokenClient, capsys: pytest.CaptureFixture[str], path: str
) -> None:
    client = token_client()
    capsys.readouterr()
    response = client.post(path, data=GRANT)
    entries = log_entries(capsys.readouterr().out)
    assert response.status_code == 404
    assert len(entries) == 1
    assert labels_of(entries[0])["reason"]


def test_rejection_logs_cert_facts(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    client_certificate: ClientCertificateFacts,
) -> None:
    headers = {
        **mtls_headers,
        "X-Client-Cert-Chain-Verified": "false",
        "X-Client-Cert-Error": "client_cert_chain_invalid_eku",
    }
    (entry,) = entries_of_request(capsys, token_client(), GRANT, headers)
    labels = labels_of(entry)
    assert labels["cert_chain_verified"] == "false"
    assert labels["cert_error"] == "client_cert_chain_invalid_eku"
    assert labels["x5_sha256"] == client_certificate.fingerprint
    assert "client_id" not in labels


def test_mismatch_logs_client_id(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = f"{GRANT}&client_id=other"
    (entry,) = entries_of_request(capsys, token_client(), body, mtls_headers)
    assert labels_of(entry)["client_id"] == CLIENT_SPIFFE_ID


def test_server_error_logged(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(self: LocalKeySigner, claims: Any, deadline: Any) -> str:
        raise RuntimeError("signer exploded")

    monkeypatch.setattr(LocalKeySigner, "sign", fail)
    (entry,) = entries_of_request(capsys, token_client(), GRANT, mtls_headers)
    assert entry["severity"] == "ERROR"
    assert labels_of(entry)["event"] == "token.server_error"
    assert "RuntimeError at" in entry["message"]
    # An exception's text can carry a token, so it never reaches the log.
    assert "signer exploded" not in json.dumps(entry)


# --- Secrets ---------------------------------------------------------------


@pytest.mark.parametrize("extra", ["", "&format=external_credential"])
def test_no_token_in_logs(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    capfd: pytest.CaptureFixture[str],
    extra: str,
) -> None:
    client = token_client(GOOGLE_CLOUD_PROJECT="my-project")
    capfd.readouterr()
    response = post_token(client, GRANT + extra, mtls_headers)
    token = response.get_json()["id_token"]
    captured = capfd.readouterr()
    output = captured.out + captured.err
    assert output
    assert token not in output
    assert token.split(".")[2] not in output
    assert not JWT_PATTERN.search(output)


def test_client_jwt_not_logged(
    token_client: TokenClient,
    mtls_headers: dict[str, str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    # A client that mistakenly sends a JWT as client_id must not get it logged.
    body = f"{GRANT}&client_id=eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln"
    client = token_client()
    capfd.readouterr()
    post_token(client, body, mtls_headers)
    captured = capfd.readouterr()
    assert not JWT_PATTERN.search(captured.out + captured.err)


def _pem_body_lines(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line for line in lines if line and not line.startswith("-----")]


def test_no_key_material_in_logs(
    make_client: AppFactory,
    service_env: dict[str, str],
    key_files: dict[str, Path],
    mtls_headers: dict[str, str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    env = {
        **service_env,
        "SIGNING_KEY_FILE": f"{key_files['rsa2048']},{key_files['ec_p256']}",
    }
    # Without TOKEN_ISSUER the issuer warning is logged, too.
    env.pop("TOKEN_ISSUER")
    client = make_client("token", env)
    post_token(client, GRANT, mtls_headers)
    post_token(client, GRANT, {})
    make_client("metadata", env).get("/jwks")
    captured = capfd.readouterr()
    output = captured.out + captured.err
    assert "PRIVATE KEY" not in output
    for name in ("rsa2048", "ec_p256"):
        for line in _pem_body_lines(key_files[name]):
            assert line not in output


# --- Execution ids (functions-framework's LOG_EXECUTION_ID) ----------------


def _rejected_request(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST",
            "/token",
            body=GRANT,
            headers={
                "Content-Type": FORM_CONTENT_TYPE,
                "Function-Execution-Id": "exec-123",
                "X-Cloud-Trace-Context": f"{TRACE_ID}/74;o=1",
            },
        )
        assert connection.getresponse().status == 401
    finally:
        connection.close()


@pytest.fixture()
def execution_id_output(
    start_function: FunctionStarter, service_env: dict[str, str]
) -> str:
    """Send one rejected request with LOG_EXECUTION_ID=true and return all output."""
    env = {**service_env, "LOG_EXECUTION_ID": "true", "GOOGLE_CLOUD_PROJECT": "proj"}
    handle = start_function("token", env)
    wait_until_listening(handle)
    _rejected_request(handle.port)
    handle.stop()
    return handle.stdout() + handle.stderr()


def test_execution_id_label(execution_id_output: str) -> None:
    entries = [
        entry
        for entry in log_entries(
            "\n".join(
                line
                for line in execution_id_output.splitlines()
                if line.startswith('{"severity"')
            )
        )
        if labels_of(entry).get("event") == "token.refused"
    ]
    assert len(entries) == 1
    assert labels_of(entries[0])["execution_id"] == "exec-123"
    assert entries[0]["logging.googleapis.com/spanId"] == "000000000000004a"


def test_execution_id_one_line(execution_id_output: str) -> None:
    lines = [
        line
        for line in execution_id_output.splitlines()
        if "Token request refused" in line
    ]
    assert len(lines) == 1
