"""End-to-end: the local stack as real processes, called over real mTLS."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from deploy.local.emulators import federated_tokens
from deploy.local.stack import (
    DEMO_WORKLOAD_ACCOUNT,
    DENIED_WORKLOAD_ACCOUNT,
    LocalStack,
    StackConfig,
)

pytestmark = pytest.mark.e2e

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
AUDIENCE = (
    "https://iam.googleapis.com/projects/123456789012/locations/global"
    "/workloadIdentityPools/demo-pool/providers/demo-provider"
)


def post_token(
    config: StackConfig, cert: str | None = "client", **form: str
) -> requests.Response:
    """POST /token through the gateway, with a demo certificate or none."""
    pki = config.pki_dir
    client_cert = None
    if cert is not None:
        client_cert = (str(pki / f"{cert}-cert.pem"), str(pki / f"{cert}-key.pem"))
    return requests.post(
        config.gateway_url + "/token",
        data={"grant_type": "client_credentials", **form},
        cert=client_cert,
        verify=str(pki / "ca.pem"),
        timeout=30,
    )


def verify_with_discovery(config: StackConfig, token: str) -> dict[str, Any]:
    """Verify an ID token as STS does: discovery, then the JWKS it names."""
    discovery = requests.get(
        config.issuer + "/.well-known/openid-configuration",
        verify=str(config.pki_dir / "ca.pem"),
        timeout=10,
    ).json()
    jwks_uri = discovery["jwks_uri"]
    verify: str | bool = str(config.pki_dir / "ca.pem")
    jwks = requests.get(jwks_uri, verify=verify, timeout=10).json()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token,
        key=key,
        algorithms=["RS256", "ES256"],
        audience=AUDIENCE,
        issuer=discovery["issuer"],
    )
    return claims


def demo_fingerprint(config: StackConfig) -> str:
    """Return the demo certificate's fingerprint in the load balancer's format."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(
        (config.pki_dir / "client-cert.pem").read_bytes()
    )
    digest = cert.fingerprint(hashes.SHA256())
    return base64.b64encode(digest).decode().rstrip("=")


def emulator_stats(base_url: str) -> dict[str, Any]:
    """Return an emulator's counters."""
    stats: dict[str, Any] = requests.get(
        base_url + "/__emulator/stats", timeout=5
    ).json()
    return stats


def inject(base_url: str, **fault: object) -> None:
    """Add a fault to an emulator."""
    response = requests.post(base_url + "/__emulator/faults", json=fault, timeout=5)
    response.raise_for_status()


@pytest.mark.parametrize("stack_name", ["iam_stack", "local_key_stack"])
def test_id_token_verifies_via_discovery(
    stack_name: str, request: pytest.FixtureRequest
) -> None:
    stack: LocalStack = request.getfixturevalue(stack_name)
    response = post_token(stack.config)

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    claims = verify_with_discovery(stack.config, response.json()["id_token"])
    assert claims["sub"] == demo_fingerprint(stack.config)
    assert claims["client"]["x5_sha256"] == demo_fingerprint(stack.config)
    assert claims["client"]["x5_dnssan"] == "demo-client.example.com"
    assert claims["client"]["x5_urisan"] == "https://devices.example.com/demo-client"
    assert claims["client"]["x5_spiffe"] == (
        "spiffe://demo.example.com/device/demo-client"
    )
    assert claims["exp"] - claims["iat"] == 300


def test_iam_token_signed_by_emulator_key(iam_stack: LocalStack) -> None:
    response = post_token(iam_stack.config)
    token = response.json()["id_token"]

    header = jwt.get_unverified_header(token)
    assert len(header["kid"]) == 40
    assert header["alg"] == "RS256"


@pytest.mark.parametrize("stack_name", ["iam_stack", "local_key_stack"])
def test_no_certificate_invalid_client(
    stack_name: str, request: pytest.FixtureRequest
) -> None:
    stack: LocalStack = request.getfixturevalue(stack_name)
    response = post_token(stack.config, cert=None)

    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"] == "invalid_client"


def test_unknown_ca_invalid_client(iam_stack: LocalStack) -> None:
    response = post_token(iam_stack.config, cert="other-client")

    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_forged_headers_do_not_authenticate(iam_stack: LocalStack) -> None:
    config = iam_stack.config
    response = requests.post(
        config.gateway_url + "/token",
        data={"grant_type": "client_credentials"},
        headers={
            "X-Client-Cert-Present": "true",
            "X-Client-Cert-Chain-Verified": "true",
            "X-Client-Cert-Hash": "om8vGt3r6eTx5TI1kCeNKRJYZTUreIbHGu+Gu8FN8To",
        },
        verify=str(config.pki_dir / "ca.pem"),
        timeout=30,
    )

    assert response.status_code == 401


def test_scope_returns_sts_token_for_client(
    iam_stack: LocalStack, emulator_faults: None
) -> None:
    response = post_token(iam_stack.config, scope=SCOPE)
    body = response.json()

    assert response.status_code == 200
    assert body["token_type"] == "Bearer"
    assert body["scope"] == SCOPE
    assert 0 < body["expires_in"] <= 300
    key = federated_tokens.load_key(iam_stack.config.state_dir / "emulators")
    issued = federated_tokens.decode(key, body["access_token"], time.time())
    assert issued.subject == demo_fingerprint(iam_stack.config)
    assert issued.scopes == (SCOPE,)


def test_service_account_returns_impersonated_token(
    iam_stack: LocalStack, emulator_faults: None
) -> None:
    response = post_token(
        iam_stack.config, scope=SCOPE, service_account=DEMO_WORKLOAD_ACCOUNT
    )
    body = response.json()

    assert response.status_code == 200
    assert body["access_token"].startswith("ya29.iam-emulator.")
    assert 0 < body["expires_in"] <= 300
    stats = emulator_stats(iam_stack.config.iam_url)
    assert stats["generateAccessToken_bearer"] == {"sts": 1}


def test_impersonation_denied_access_denied(
    iam_stack: LocalStack, emulator_faults: None
) -> None:
    response = post_token(
        iam_stack.config, scope=SCOPE, service_account=DENIED_WORKLOAD_ACCOUNT
    )
    body = response.json()

    assert response.status_code == 403
    assert body["error"] == "access_denied"
    assert "getAccessToken" in body["error_description"]
    assert "http" not in body["error_description"]


def test_sign_jwt_forbidden_server_error(
    iam_stack: LocalStack, emulator_faults: None
) -> None:
    inject(iam_stack.config.iam_url, method="signJwt", fault="status", status=403)
    response = post_token(iam_stack.config)

    assert response.status_code == 500
    assert response.json()["error"] == "server_error"
    assert emulator_stats(iam_stack.config.iam_url)["requests"]["signJwt"] == 1


def test_sts_refusal_access_denied(
    iam_stack: LocalStack, emulator_faults: None
) -> None:
    sts_url = f"http://127.0.0.1:{iam_stack.config.sts_port}"
    inject(sts_url, method="token", fault="status", status=400)
    response = post_token(iam_stack.config, scope=SCOPE)
    body = response.json()

    assert response.status_code == 403
    assert body["error"] == "access_denied"
    assert body["error_description"].startswith("STS rejected the token")


@pytest.mark.parametrize("fault", ["hang", "reset"])
def test_iam_unavailable_prompt_503(
    iam_stack: LocalStack, emulator_faults: None, fault: str
) -> None:
    inject(iam_stack.config.iam_url, method="signJwt", fault=fault)
    started = time.monotonic()
    response = post_token(iam_stack.config)
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    # UPSTREAM_DEADLINE_SECONDS is 3 in these stacks; allow for TLS and load.
    assert elapsed < 6
    assert emulator_stats(iam_stack.config.iam_url)["requests"]["signJwt"] <= 2


def test_sts_slow_prompt_503(iam_stack: LocalStack, emulator_faults: None) -> None:
    sts_url = f"http://127.0.0.1:{iam_stack.config.sts_port}"
    inject(sts_url, method="token", fault="hang")
    started = time.monotonic()
    response = post_token(iam_stack.config, scope=SCOPE)
    elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert elapsed < 6


def test_external_credential_format(iam_stack: LocalStack) -> None:
    response = post_token(iam_stack.config, format="external_credential", scope=SCOPE)
    body = response.json()

    assert response.status_code == 200
    assert body["version"] == 1
    assert body["success"] is True
    assert body["token_type"] == "urn:ietf:params:oauth:token-type:id_token"
    assert body["expiration_time"] > time.time()
    assert "access_token" not in body


def test_external_credential_error_format(iam_stack: LocalStack) -> None:
    response = post_token(iam_stack.config, cert=None, format="external_credential")
    body = response.json()

    assert response.status_code == 401
    assert body == {
        "version": 1,
        "success": False,
        "code": "invalid_client",
        "message": "Client authentication failed.",
    }


@pytest.mark.parametrize("impersonate", [False, True])
def test_google_auth_consumes_executable_output(
    iam_stack: LocalStack,
    emulator_faults: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    impersonate: bool,
) -> None:
    import google.auth.transport.requests
    from google.auth import pluggable

    config = iam_stack.config
    pki = config.pki_dir
    command = (
        f"/usr/bin/curl -s --cacert {pki}/ca.pem --cert {pki}/client-cert.pem "
        f"--key {pki}/client-key.pem {config.gateway_url}/token "
        "--data format=external_credential --data grant_type=client_credentials"
    )
    # The shape `gcloud iam workload-identity-pools create-cred-config
    # --executable-command` writes, with the endpoints moved to the emulators.
    info: dict[str, Any] = {
        "universe_domain": "googleapis.com",
        "type": "external_account",
        "audience": AUDIENCE.removeprefix("https:"),
        "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
        "token_url": config.sts_url,
        "credential_source": {
            "executable": {"command": command, "timeout_millis": 10000}
        },
    }
    if impersonate:
        info["service_account_impersonation_url"] = (
            f"{config.iam_url}/v1/projects/-/serviceAccounts/"
            f"{DEMO_WORKLOAD_ACCOUNT}:generateAccessToken"
        )
    (tmp_path / "credentials.json").write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES", "1")

    credentials = pluggable.Credentials.from_info(info, scopes=[SCOPE])
    with requests.Session() as session:
        credentials.refresh(google.auth.transport.requests.Request(session))

    assert credentials.valid
    prefix = "ya29.iam-emulator." if impersonate else "ya29.sts-emulator."
    assert credentials.token.startswith(prefix)
