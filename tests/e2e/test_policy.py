"""End-to-end: the client policy, revocation and validity over the local stack.

One stack runs with every policy feature on: the example policy plus a
revoked serial, a CRL, the leaf, chain and DN headers, TRUSTED_CA_FILE and
the load balancer secret. Its gateway allowlists an expired and a not yet
valid certificate, as a TrustConfig can, so that those reach the service's
validity check. HAProxy, when installed, replaces the gateway in two more
tests.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
import yaml
from cryptography.hazmat.primitives import serialization

from deploy.local import pki
from deploy.local.stack import (
    DEMO_WORKLOAD_ACCOUNT,
    DENIED_WORKLOAD_ACCOUNT,
    EXAMPLE_POLICY_FILE,
    REPO_ROOT,
    LocalStack,
    StackConfig,
    running_stack,
)
from shared import lb_headers
from tests.e2e.conftest import free_ports, stack_config
from tests.e2e.test_local_stack import SCOPE, demo_fingerprint, post_token

pytestmark = pytest.mark.e2e

LB_SECRET_HEADER = "X-Lb-Secret"
LB_SECRET = "e2e-lb-secret-0123456789abcdef"
LOG_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class Client:
    """A client certificate and key on disk, with the cert's LB fingerprint."""

    cert_file: Path
    key_file: Path
    fingerprint: str
    serial: int


def write_client(
    directory: Path,
    name: str,
    issued: pki.IssuedCertificate,
    *chain: pki.IssuedCertificate,
) -> Client:
    cert_file, key_file = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    cert_file.write_bytes(
        b"".join(
            item.certificate.public_bytes(serialization.Encoding.PEM)
            for item in (issued, *chain)
        )
    )
    pki.write_private_key(key_file, issued.private_key)
    der = issued.certificate.public_bytes(serialization.Encoding.DER)
    fingerprint = base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")
    return Client(cert_file, key_file, fingerprint, issued.certificate.serial_number)


@dataclass
class PolicyStack:
    """The stack with every policy feature on, and its demo clients."""

    stack: LocalStack
    clients: dict[str, Client]

    @property
    def config(self) -> StackConfig:
        return self.stack.config

    def post(self, name: str, **form: str) -> requests.Response:
        client = self.clients[name]
        return requests.post(
            self.config.gateway_url + "/token",
            data={"grant_type": "client_credentials", **form},
            cert=(str(client.cert_file), str(client.key_file)),
            verify=str(self.config.pki_dir / "ca.pem"),
            timeout=30,
        )


def mint_clients(pki_dir: Path, out: Path) -> dict[str, Client]:
    ca = pki.IssuedCertificate(
        pki.load_certificate(pki_dir / "ca.pem"),
        pki.load_private_key(pki_dir / "ca-key.pem"),
    )
    utc = datetime.datetime.now(datetime.UTC)

    def device(name: str, **options: Any) -> pki.IssuedCertificate:
        options.setdefault("spiffe_id", f"spiffe://demo.example.com/device/{name}")
        options.setdefault("dns_names", (f"{name}.devices.example.com",))
        return pki.issue_client_certificate(
            options.pop("issuer", ca).certificate,
            options.pop("issuer_key", ca.private_key),
            common_name=name,
            **options,
        )

    intermediate = pki.create_intermediate_authority(
        ca, "token-service demo issuing CA"
    )
    return {
        "allowed": write_client(out, "allowed", device("allowed")),
        "quarantined": write_client(
            out,
            "quarantined",
            device("q1", spiffe_id="spiffe://demo.example.com/device/quarantined/q1"),
        ),
        "policy-revoked": write_client(out, "policy-revoked", device("policy-revoked")),
        "crl-revoked": write_client(out, "crl-revoked", device("crl-revoked")),
        "expired": write_client(
            out,
            "expired",
            device(
                "expired",
                not_before=utc - datetime.timedelta(days=30),
                not_after=utc - datetime.timedelta(days=1),
            ),
        ),
        "not-yet-valid": write_client(
            out,
            "not-yet-valid",
            device(
                "not-yet-valid",
                not_before=utc + datetime.timedelta(days=1),
                not_after=utc + datetime.timedelta(days=30),
            ),
        ),
        "san-mismatch": write_client(
            out, "san-mismatch", device("san-mismatch", dns_names=("device.other.org",))
        ),
        "via-intermediate": write_client(
            out,
            "via-intermediate",
            device(
                "via-intermediate",
                issuer=intermediate,
                issuer_key=intermediate.private_key,
            ),
            intermediate,
        ),
    }


def write_stack_policy(path: Path, revoked: Client) -> None:
    policy = yaml.safe_load(EXAMPLE_POLICY_FILE.read_text())
    serial = revoked.serial.to_bytes((revoked.serial.bit_length() + 8) // 8, "big")
    policy["revoked"]["serial_numbers"] = [":".join(f"{b:02x}" for b in serial)]
    path.write_text(json.dumps(policy))


@pytest.fixture(scope="module")
def policy_stack(
    stack_state_dir: Path, stack_log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PolicyStack]:
    config = stack_config(stack_state_dir, stack_log_dir / "policy", signing="local")
    pki.generate_pki(config.pki_dir)
    files = tmp_path_factory.mktemp("policy-stack")
    clients = mint_clients(config.pki_dir, files)

    ca = pki.IssuedCertificate(
        pki.load_certificate(config.pki_dir / "ca.pem"),
        pki.load_private_key(config.pki_dir / "ca-key.pem"),
    )
    crl = files / "crl.pem"
    crl.write_bytes(
        pki.create_crl(ca, [clients["crl-revoked"].serial]).public_bytes(
            serialization.Encoding.PEM
        )
    )
    policy = files / "policy.json"
    write_stack_policy(policy, clients["policy-revoked"])
    config.extra_env.update(
        {
            header.setting: lb_headers.SUGGESTED_OPTIONAL_NAMES[header.key]
            for header in lb_headers.OPTIONAL_HEADERS
        }
    )
    config.extra_env.update(
        CLIENT_POLICY_FILE=str(policy),
        CRL_FILE=str(crl),
        TRUSTED_CA_FILE=str(config.pki_dir / "ca.pem"),
        LB_SECRET_HEADER=LB_SECRET_HEADER,
        LB_SECRET=LB_SECRET,
    )
    config.gateway_args = (
        "--allowlist-cert", str(clients["expired"].cert_file),
        "--allowlist-cert", str(clients["not-yet-valid"].cert_file),
    )  # fmt: skip
    with running_stack(config) as stack:
        yield PolicyStack(stack, clients)


def token_log_entries(config: StackConfig) -> list[dict[str, Any]]:
    assert config.log_dir is not None
    entries = []
    for line in (config.log_dir / "token.log").read_text().splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def log_position(config: StackConfig) -> int:
    """Return how many entries the token log contains now."""
    return len(token_log_entries(config))


def decision_labels(
    config: StackConfig, fingerprint: str, since: int = 0
) -> dict[str, str]:
    """Wait for the last token decision about a certificate; return its labels.

    Only entries after position ``since`` count, because the log reaches its
    file with a delay. An earlier test's decision about the same certificate
    then cannot be mistaken for the one the caller waits for.
    """
    deadline = time.monotonic() + LOG_WAIT_SECONDS
    while True:
        for entry in reversed(token_log_entries(config)[since:]):
            labels: dict[str, str] = entry.get("logging.googleapis.com/labels", {})
            if labels.get("x5_sha256") == fingerprint and labels.get(
                "event", ""
            ).startswith("token."):
                return labels
        if time.monotonic() > deadline:
            pytest.fail(f"no token decision logged for {fingerprint}")
        time.sleep(0.1)


# --- The README flows under the example policy -------------------------------


def test_example_policy_allows_readme_flows(iam_stack: LocalStack) -> None:
    config = iam_stack.config
    assert config.policy_file == EXAMPLE_POLICY_FILE

    plain = post_token(config)
    scoped = post_token(config, scope=SCOPE)
    impersonated = post_token(
        config, scope=SCOPE, service_account=DEMO_WORKLOAD_ACCOUNT
    )
    denied = post_token(config, scope=SCOPE, service_account=DENIED_WORKLOAD_ACCOUNT)

    assert plain.status_code == 200
    assert scoped.status_code == 200
    assert impersonated.status_code == 200
    # Allowed by the policy, refused by the IAM emulator's binding.
    assert denied.status_code == 403
    assert denied.json()["error"] == "access_denied"
    claims = jwt.decode(plain.json()["id_token"], options={"verify_signature": False})
    assert claims["client"]["environment"] == "local-demo"


def test_example_policy_logs_rule(iam_stack: LocalStack) -> None:
    config = iam_stack.config
    since = log_position(config)
    assert post_token(config).status_code == 200
    labels = decision_labels(config, demo_fingerprint(config), since)
    assert labels["policy_rule"] == "demo-devices"
    assert "dns_san=demo-client.example.com" in labels["policy_matched"]


def test_example_policy_refuses_other_scope(iam_stack: LocalStack) -> None:
    response = post_token(
        iam_stack.config, scope="https://www.googleapis.com/auth/drive"
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"


# --- Certificates through the full policy stack ------------------------------

REFUSALS = [
    ("quarantined", "policy_denied"),
    ("policy-revoked", "certificate_revoked"),
    ("crl-revoked", "certificate_revoked"),
    ("expired", "certificate_expired"),
    ("not-yet-valid", "certificate_not_yet_valid"),
    ("san-mismatch", "policy_no_match"),
]


@pytest.mark.parametrize(("name", "reason"), REFUSALS)
def test_certificate_refused(policy_stack: PolicyStack, name: str, reason: str) -> None:
    since = log_position(policy_stack.config)
    response = policy_stack.post(name)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    labels = decision_labels(
        policy_stack.config, policy_stack.clients[name].fingerprint, since
    )
    assert labels["event"] == "token.refused"
    assert labels["reason"] == reason


@pytest.mark.parametrize("name", ["allowed", "via-intermediate"])
def test_certificate_allowed(policy_stack: PolicyStack, name: str) -> None:
    since = log_position(policy_stack.config)
    response = policy_stack.post(name, scope=SCOPE)
    assert response.status_code == 200, response.text
    claims = jwt.decode(
        response.json()["id_token"], options={"verify_signature": False}
    )
    client = policy_stack.clients[name]
    assert claims["client"]["x5_sha256"] == client.fingerprint
    assert claims["cnf"]["x5t#S256"] == (
        base64.urlsafe_b64encode(base64.b64decode(client.fingerprint + "="))
        .decode()
        .rstrip("=")
    )
    labels = decision_labels(policy_stack.config, client.fingerprint, since)
    assert labels["policy_rule"] == "demo-devices"
    assert labels["cert_facts"] == "leaf"


def test_forged_headers_without_secret_refused(policy_stack: PolicyStack) -> None:
    # Straight to the function, past the gateway that adds the secret.
    config = policy_stack.config
    allowed = policy_stack.clients["allowed"]
    since = log_position(config)
    response = requests.post(
        f"http://127.0.0.1:{config.token_port}/token",
        data={"grant_type": "client_credentials"},
        headers={
            "X-Client-Cert-Present": "true",
            "X-Client-Cert-Chain-Verified": "true",
            "X-Client-Cert-Hash": allowed.fingerprint,
            "X-Client-Cert-Spiffe": "spiffe://demo.example.com/device/allowed",
        },
        timeout=10,
    )
    assert response.status_code == 401
    labels = decision_labels(config, allowed.fingerprint, since)
    assert labels["reason"] == "lb_secret_mismatch"
    assert LB_SECRET not in (config.log_dir / "token.log").read_text()  # type: ignore[operator]


# --- HAProxy as the front end ------------------------------------------------


@pytest.fixture()
def haproxy(policy_stack: PolicyStack, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.skip("haproxy is not installed (apt-get install -y haproxy)")
    pki_dir = policy_stack.config.pki_dir
    server_pem = tmp_path / "server.pem"
    server_pem.write_bytes(
        (pki_dir / "server-cert.pem").read_bytes()
        + (pki_dir / "server-key.pem").read_bytes()
    )
    (port,) = free_ports(1)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TOKEN_SERVICE_LISTEN": f"127.0.0.1:{port}",
        "TOKEN_SERVICE_SERVER_PEM": str(server_pem),
        "TOKEN_SERVICE_CLIENT_CA": str(pki_dir / "ca.pem"),
        "TOKEN_SERVICE_BACKEND": f"127.0.0.1:{policy_stack.config.token_port}",
        "TOKEN_SERVICE_LB_SECRET_HEADER": LB_SECRET_HEADER,
        "TOKEN_SERVICE_LB_SECRET": LB_SECRET,
    }
    log = tmp_path / "haproxy.err"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(REPO_ROOT / "deploy/local/haproxy.cfg")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        _wait_for_port(process, port, log)
        yield f"https://localhost:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"haproxy exited: {log.read_text()}")
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    pytest.fail("haproxy did not listen")


def post_via(url: str, ca: Path, client: Client | None) -> requests.Response:
    cert = None if client is None else (str(client.cert_file), str(client.key_file))
    return requests.post(
        url + "/token",
        data={"grant_type": "client_credentials"},
        cert=cert,
        verify=str(ca),
        timeout=30,
    )


def test_haproxy_front_end(policy_stack: PolicyStack, haproxy: str) -> None:
    ca = policy_stack.config.pki_dir / "ca.pem"
    allowed = post_via(haproxy, ca, policy_stack.clients["allowed"])
    quarantined = post_via(haproxy, ca, policy_stack.clients["quarantined"])
    anonymous = post_via(haproxy, ca, None)

    assert allowed.status_code == 200, allowed.text
    claims = jwt.decode(allowed.json()["id_token"], options={"verify_signature": False})
    assert claims["sub"] == policy_stack.clients["allowed"].fingerprint
    assert claims["client"]["x5_spiffe"] == "spiffe://demo.example.com/device/allowed"
    assert claims["client"]["x5_dnssans"] == ["allowed.devices.example.com"]
    assert quarantined.status_code == 401
    assert anonymous.status_code == 401


def test_haproxy_drops_client_headers(policy_stack: PolicyStack, haproxy: str) -> None:
    # A client without a certificate sends the headers of an allowed one.
    allowed = policy_stack.clients["allowed"]
    forged: Mapping[str, str] = {
        "X-Client-Cert-Present": "true",
        "X-Client-Cert-Chain-Verified": "true",
        "X-Client-Cert-Hash": allowed.fingerprint,
        "X-Client-Cert-Leaf": ":"
        + base64.b64encode(
            pki.load_certificate(allowed.cert_file).public_bytes(
                serialization.Encoding.DER
            )
        ).decode()
        + ":",
    }
    response = requests.post(
        haproxy + "/token",
        data={"grant_type": "client_credentials"},
        headers=dict(forged),
        verify=str(policy_stack.config.pki_dir / "ca.pem"),
        timeout=30,
    )
    assert response.status_code == 401
