"""Start-up of ``functions-framework --target token`` with invalid configurations.

Each case starts the real command line as a subprocess and expects it to exit
non-zero, naming the variable in its output and in one structured ERROR entry.
"""

from __future__ import annotations

import http.client
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    PROCESS_TIMEOUT_SECS,
    FunctionProcess,
    FunctionStarter,
    labels_of,
    wait_until_listening,
)

# (id, changes to the valid config, variable named, text the message contains)
# A change of None removes the variable. Key file values name key_files entries.
CONFIG_ERRORS: list[tuple[str, dict[str, str | None], str, str]] = [
    ("auth-flows-missing", {"AUTH_FLOWS": None}, "AUTH_FLOWS", "missing"),
    ("auth-flows-unknown", {"AUTH_FLOWS": "jwt-bearer"}, "AUTH_FLOWS", "jwt-bearer"),
    (
        "project-number-missing",
        {"WORKLOAD_IDENITY_PROJECT_NUMBER": None},
        "WORKLOAD_IDENITY_PROJECT_NUMBER",
        "missing",
    ),
    (
        "project-id-as-number",
        {"WORKLOAD_IDENITY_PROJECT_NUMBER": "my-project"},
        "WORKLOAD_IDENITY_PROJECT_NUMBER",
        "project ID",
    ),
    (
        "spellings-conflict",
        {"WORKLOAD_IDENTITY_POOL_ID": "other-pool"},
        "WORKLOAD_IDENTITY_POOL_ID",
        "other-pool",
    ),
    (
        "pool-id-invalid",
        {"WORKLOAD_IDENITY_POOL_ID": "Pool_1"},
        "WORKLOAD_IDENITY_POOL_ID",
        "Pool_1",
    ),
    (
        "provider-id-missing",
        {"WORKLOAD_IDENITY_PROVIDER_ID": None},
        "WORKLOAD_IDENITY_PROVIDER_ID",
        "missing",
    ),
    ("validity-zero", {"TOKEN_VALIDITY": "0"}, "TOKEN_VALIDITY", "1 to 720"),
    ("validity-721", {"TOKEN_VALIDITY": "721"}, "TOKEN_VALIDITY", "1 to 720"),
    ("validity-text", {"TOKEN_VALIDITY": "five"}, "TOKEN_VALIDITY", "1 to 720"),
    ("validity-underscore", {"TOKEN_VALIDITY": "1_0"}, "TOKEN_VALIDITY", "1_0"),
    (
        "issuer-http",
        {"TOKEN_ISSUER": "http://token.example.com"},
        "TOKEN_ISSUER",
        "http://token.example.com",
    ),
    (
        "issuer-query",
        {"TOKEN_ISSUER": "https://token.example.com?x=1"},
        "TOKEN_ISSUER",
        "query",
    ),
    (
        "issuer-bad-port",
        {"TOKEN_ISSUER": "https://token.example.com:99999"},
        "TOKEN_ISSUER",
        "99999",
    ),
    (
        "project-number-correct-spelling",
        {
            "WORKLOAD_IDENITY_PROJECT_NUMBER": None,
            "WORKLOAD_IDENTITY_PROJECT_NUMBER": "my-project",
        },
        "WORKLOAD_IDENTITY_PROJECT_NUMBER",
        "project ID",
    ),
    (
        "client-id-header",
        {"MTLS_HEADER_CLIENT_ID": "X-Client-Cert-Present"},
        "MTLS_HEADER_CLIENT_ID",
        "X-Client-Cert-Hash",
    ),
    (
        "header-name-invalid",
        {"MTLS_HEADER_CLIENT_CERT_PRESENT": "X Present"},
        "MTLS_HEADER_CLIENT_CERT_PRESENT",
        "X Present",
    ),
    (
        "key-file-missing",
        {"SIGNING_KEY_FILE": "missing"},
        "SIGNING_KEY_FILE",
        "not found",
    ),
    ("key-rsa-1024", {"SIGNING_KEY_FILE": "rsa1024"}, "SIGNING_KEY_FILE", "1024-bit"),
    ("key-ec-p384", {"SIGNING_KEY_FILE": "ec_p384"}, "SIGNING_KEY_FILE", "P-256"),
    ("key-ed25519", {"SIGNING_KEY_FILE": "ed25519"}, "SIGNING_KEY_FILE", "P-256"),
    ("key-encrypted", {"SIGNING_KEY_FILE": "encrypted"}, "SIGNING_KEY_FILE", "PEM"),
    ("key-not-pem", {"SIGNING_KEY_FILE": "garbage"}, "SIGNING_KEY_FILE", "PEM"),
    (
        "second-key-bad",
        {"SIGNING_KEY_FILE": "rsa2048,rsa1024"},
        "SIGNING_KEY_FILE",
        "1024-bit",
    ),
    (
        "no-signer",
        {"SIGNING_KEY_FILE": None},
        "SERVICE_ACCOUNT_EMAIL",
        "SIGNING_KEY_FILE",
    ),
    (
        "service-account-invalid",
        {"SIGNING_KEY_FILE": None, "SERVICE_ACCOUNT_EMAIL": "broker"},
        "SERVICE_ACCOUNT_EMAIL",
        "broker",
    ),
    (
        "log-execution-id-invalid",
        {"LOG_EXECUTION_ID": "sometimes"},
        "LOG_EXECUTION_ID",
        "sometimes",
    ),
]


def _environment(
    service_env: dict[str, str],
    key_files: dict[str, Path],
    tmp_path: Path,
    changes: dict[str, str | None],
) -> dict[str, str]:
    env = dict(service_env)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        elif name == "SIGNING_KEY_FILE":
            env[name] = ",".join(
                str(key_files.get(part, tmp_path / f"{part}.pem"))
                for part in value.split(",")
            )
        else:
            env[name] = value
    return env


def _wait_for_exit(handle: FunctionProcess) -> int:
    try:
        return handle.process.wait(timeout=PROCESS_TIMEOUT_SECS)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {PROCESS_TIMEOUT_SECS} s: {handle.stdout()}")


def _entries(stdout: str) -> list[dict[str, Any]]:
    entries = []
    for line in stdout.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


@pytest.mark.parametrize(
    ("changes", "variable", "fragment"),
    [pytest.param(*case[1:], id=case[0]) for case in CONFIG_ERRORS],
)
def test_invalid_config_stops_startup(
    start_function: FunctionStarter,
    service_env: dict[str, str],
    key_files: dict[str, Path],
    tmp_path: Path,
    changes: dict[str, str | None],
    variable: str,
    fragment: str,
) -> None:
    env = _environment(service_env, key_files, tmp_path, changes)
    handle = start_function("token", env)

    assert _wait_for_exit(handle) != 0
    output = handle.stdout() + handle.stderr()
    assert variable in output
    assert fragment in output

    errors = [
        entry
        for entry in _entries(handle.stdout())
        if labels_of(entry).get("event") == "config.invalid"
    ]
    assert len(errors) == 1
    assert errors[0]["severity"] == "ERROR"
    assert labels_of(errors[0])["variable"] == variable
    assert variable in errors[0]["message"]
    assert "PRIVATE KEY" not in output


def test_valid_config_serves(
    start_function: FunctionStarter, service_env: dict[str, str]
) -> None:
    handle = start_function("token", service_env)
    wait_until_listening(handle)

    connection = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=10)
    try:
        connection.request(
            "POST",
            "/token",
            body="grant_type=client_credentials",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()

    assert response.status == 401
    assert body["error"] == "invalid_client"
    assert handle.process.poll() is None
    loaded = [
        entry
        for entry in _entries(handle.stdout())
        if labels_of(entry).get("event") == "config.loaded"
    ]
    assert len(loaded) == 1
    assert loaded[0]["severity"] == "INFO"
