"""End-to-end: the URL-mask layout, the Cloud Run account lookup, a down API."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jwt
import pytest
import requests

from deploy.local.stack import (
    SERVICE_ACCOUNT,
    LocalStack,
    function_environment,
    running_stack,
)
from tests.e2e.conftest import (
    free_ports,
    function_command,
    running_process,
    stack_config,
)
from tests.e2e.test_local_stack import SCOPE, post_token

pytestmark = pytest.mark.e2e

# Headers the load balancer would send for a verified certificate.
VERIFIED_HEADERS = {
    "X-Client-Cert-Present": "true",
    "X-Client-Cert-Chain-Verified": "true",
    "X-Client-Cert-Hash": "om8vGt3r6eTx5TI1kCeNKRJYZTUreIbHGu+Gu8FN8To",
}


@pytest.mark.parametrize(
    "gateway_args",
    [(), ("--strip-mask-segment",)],
    ids=["path-kept", "segment-removed"],
)
def test_url_mask_layout_end_to_end(
    stack_state_dir: Path, stack_log_dir: Path, gateway_args: tuple[str, ...]
) -> None:
    # Both readings of how a URL mask passes the path on must work.
    name = "url-mask" + ("-stripped" if gateway_args else "")
    config = stack_config(
        stack_state_dir, stack_log_dir / name, signing="iam", routing="url-mask"
    )
    config.gateway_args = gateway_args
    with running_stack(config):
        ca = str(config.pki_dir / "ca.pem")
        discovery_url = (
            config.gateway_url + "/metadata/.well-known/openid-configuration"
        )
        discovery = requests.get(discovery_url, verify=ca, timeout=10).json()
        root = requests.get(
            config.gateway_url + "/.well-known/openid-configuration",
            verify=ca,
            timeout=10,
        )
        response = post_token(config, scope=SCOPE)

    assert discovery["issuer"] == config.gateway_url + "/metadata"
    assert discovery["token_endpoint"] == config.gateway_url + "/token"
    assert root.status_code == 404
    assert response.status_code == 200
    claims = jwt.decode(
        response.json()["id_token"], options={"verify_signature": False}
    )
    assert claims["iss"] == config.gateway_url + "/metadata"
    assert response.json()["access_token"].startswith("ya29.sts-emulator.")


def test_account_from_metadata_server(
    iam_stack: LocalStack, stack_log_dir: Path
) -> None:
    metadata_port, token_port = free_ports(2)
    standin = [
        sys.executable,
        "-m",
        "deploy.local.emulators.gce_metadata",
        "--listen",
        f"127.0.0.1:{metadata_port}",
        "--email",
        SERVICE_ACCOUNT,
        "--project-id",
        "demo-project",
    ]
    env = function_environment(iam_stack.config)
    env.pop("SERVICE_ACCOUNT_EMAIL")
    # The Cloud Run path: google-auth may look for a metadata server, and
    # finds the loopback stand-in.
    env.pop("NO_GCE_CHECK")
    env["GCE_METADATA_HOST"] = f"127.0.0.1:{metadata_port}"
    env["GCE_METADATA_IP"] = f"127.0.0.1:{metadata_port}"
    env["TOKEN_ISSUER"] = "https://issuer.example.com"
    logs = stack_log_dir / "cloud-run"
    with (
        running_process(standin, env, metadata_port, logs / "gce-metadata.log"),
        running_process(
            function_command("token", token_port), env, token_port, logs / "token.log"
        ),
    ):
        response = requests.post(
            f"http://127.0.0.1:{token_port}/token",
            data={"grant_type": "client_credentials"},
            headers=VERIFIED_HEADERS,
            timeout=10,
        )

    assert response.status_code == 200
    token = response.json()["id_token"]
    jwks = requests.get(
        f"{iam_stack.config.iam_url}/service_accounts/v1/metadata/jwk/"
        f"{SERVICE_ACCOUNT}",
        timeout=10,
    ).json()
    key = jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(
        token, key=key, algorithms=["RS256"], options={"verify_aud": False}
    )
    assert claims["iss"] == "https://issuer.example.com"


def test_no_account_stops_start_up(iam_stack: LocalStack, stack_log_dir: Path) -> None:
    import subprocess

    (token_port,) = free_ports(1)
    env = function_environment(iam_stack.config)
    env.pop("SERVICE_ACCOUNT_EMAIL")
    result = subprocess.run(
        function_command("token", token_port),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    assert "SERVICE_ACCOUNT_EMAIL" in result.stdout + result.stderr
    assert "SIGNING_KEY_FILE" in result.stdout + result.stderr


def test_iam_down_prompt_503(iam_stack: LocalStack, stack_log_dir: Path) -> None:
    (closed_port, token_port) = free_ports(2)
    env = function_environment(iam_stack.config)
    env["IAM_CREDENTIALS_ENDPOINT"] = f"http://127.0.0.1:{closed_port}"
    log = stack_log_dir / "iam-down" / "token.log"
    with running_process(function_command("token", token_port), env, token_port, log):
        started = time.monotonic()
        response = requests.post(
            f"http://127.0.0.1:{token_port}/token",
            data={"grant_type": "client_credentials"},
            headers=VERIFIED_HEADERS,
            timeout=30,
        )
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert elapsed < 5


def test_sts_rejects_wrong_provider(iam_stack: LocalStack, stack_log_dir: Path) -> None:
    (token_port,) = free_ports(1)
    env = function_environment(iam_stack.config)
    # Tokens for a provider that the STS emulator does not serve.
    env["WORKLOAD_IDENITY_PROVIDER_ID"] = "other-provider"
    env["TOKEN_ISSUER"] = iam_stack.config.issuer
    log = stack_log_dir / "wrong-provider" / "token.log"
    with running_process(function_command("token", token_port), env, token_port, log):
        response = requests.post(
            f"http://127.0.0.1:{token_port}/token",
            data={"grant_type": "client_credentials", "scope": SCOPE},
            headers=VERIFIED_HEADERS,
            timeout=30,
        )
    body = response.json()

    assert response.status_code == 403
    assert body["error"] == "access_denied"
    assert "STS rejected the token" in body["error_description"]
    assert '"' not in body["error_description"]
