"""Fixtures for the policy tests: a demo CA, minted certificates, LB headers.

Header values come from the local gateway's ``describe_client_certificate``,
which encodes a certificate's facts as the load balancer does, so each test
sends what a verified client would get through the load balancer.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask.testing import FlaskClient

from deploy.local import gateway, pki
from shared import lb_headers
from tests.conftest import AppFactory, log_entries, post_token

GRANT = "grant_type=client_credentials"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"

# Variables the policy features read; the root conftest does not clear them.
POLICY_VARIABLES = (
    "CLIENT_POLICY_FILE",
    "CRL_FILE",
    "TRUSTED_CA_FILE",
    "LB_SECRET_HEADER",
    "LB_SECRET",
    *(header.setting for header in lb_headers.OPTIONAL_HEADERS),
)

# The opt-in headers under the names the documentation suggests.
OPTIONAL_HEADER_ENV = {
    header.setting: lb_headers.SUGGESTED_OPTIONAL_NAMES[header.key]
    for header in lb_headers.OPTIONAL_HEADERS
}
LEAF_HEADER = lb_headers.SUGGESTED_OPTIONAL_NAMES[lb_headers.LEAF.key]
CHAIN_HEADER = lb_headers.SUGGESTED_OPTIONAL_NAMES[lb_headers.CHAIN.key]
SUBJECT_DN_HEADER = lb_headers.SUGGESTED_OPTIONAL_NAMES[lb_headers.SUBJECT_DN.key]
ISSUER_DN_HEADER = lb_headers.SUGGESTED_OPTIONAL_NAMES[lb_headers.ISSUER_DN.key]

DEMO_TRUST_DOMAIN = "demo.example.com"


@pytest.fixture(autouse=True)
def _no_policy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in POLICY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="session")
def demo_ca() -> pki.IssuedCertificate:
    """A root CA for the tests' client certificates."""
    return pki.create_certificate_authority("policy tests root CA")


@pytest.fixture(scope="session")
def other_ca() -> pki.IssuedCertificate:
    """A second root CA, unknown to the trust anchors of the tests."""
    return pki.create_certificate_authority("policy tests other CA")


Mint = Callable[..., pki.IssuedCertificate]


@pytest.fixture(scope="session")
def mint(demo_ca: pki.IssuedCertificate) -> Mint:
    """Issue a client certificate from the demo CA; keywords as in pki."""

    def issue(
        name: str = "device-1", ca: pki.IssuedCertificate | None = None, **options: Any
    ) -> pki.IssuedCertificate:
        issuer = ca or demo_ca
        options.setdefault("spiffe_id", f"spiffe://{DEMO_TRUST_DOMAIN}/device/{name}")
        options.setdefault("dns_names", (f"{name}.devices.example.com",))
        return pki.issue_client_certificate(
            issuer.certificate, issuer.private_key, common_name=name, **options
        )

    return issue


def lb_headers_for(
    certificate: x509.Certificate,
    intermediates: Sequence[x509.Certificate] = (),
    *,
    anchors: Sequence[x509.Certificate] = (),
    optional: bool = False,
) -> dict[str, str]:
    """Return the headers the load balancer sends for a verified certificate.

    The certificate counts as allowlisted unless ``anchors`` are given, so
    expired certificates get the dates an allowlisted one would. With
    ``optional`` the DN, leaf and chain headers are included.
    """
    allowlist = (
        () if anchors else (certificate.public_bytes(serialization.Encoding.DER),)
    )
    policy = gateway.client_policy_builder(list(anchors) or [certificate])
    values = gateway.describe_client_certificate(
        certificate, intermediates, policy, "per-entry", allowlist
    )
    names = lb_headers.header_names()
    headers = {
        names[header.key]: values[header.key]
        for header in lb_headers.CERTIFICATE_HEADERS
    }
    if optional:
        for header in lb_headers.OPTIONAL_HEADERS:
            headers[lb_headers.SUGGESTED_OPTIONAL_NAMES[header.key]] = values[
                header.key
            ]
    return headers


def write_policy(
    directory: Path, policy: Mapping[str, Any], name: str = "policy.yaml"
) -> Path:
    """Write ``policy`` as JSON, which YAML parsers read as well."""
    path = directory / name
    path.write_text(json.dumps(policy), encoding="utf-8")
    return path


def write_pem(
    directory: Path, name: str, certificates: Sequence[x509.Certificate]
) -> Path:
    """Write certificates to one PEM bundle."""
    path = directory / name
    path.write_bytes(
        b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in certificates)
    )
    return path


def rule(
    rule_id: str = "allow-all", effect: str = "allow", **fields: Any
) -> dict[str, Any]:
    """Return one policy rule."""
    return {"id": rule_id, "effect": effect, **fields}


@dataclass
class TokenCall:
    """The outcome of one token request: status, body and log entries."""

    status: int
    body: dict[str, Any]
    entries: list[dict[str, Any]]

    @property
    def labels(self) -> dict[str, str]:
        """Labels of the request's single log entry."""
        assert len(self.entries) == 1, self.entries
        labels = self.entries[0].get("logging.googleapis.com/labels", {})
        assert isinstance(labels, dict)
        return labels

    @property
    def claims(self) -> dict[str, Any]:
        """Unverified claims of the issued ID token."""
        claims: dict[str, Any] = jwt.decode(
            self.body["id_token"], options={"verify_signature": False}
        )
        return claims


@dataclass
class TokenFunction:
    """The token function under test, and what it logged at start-up."""

    client: FlaskClient
    capsys: pytest.CaptureFixture[str]
    startup: list[dict[str, Any]]

    def __call__(self, headers: Mapping[str, str], body: str = GRANT) -> TokenCall:
        """Send one token request and collect its response and log entries."""
        self.capsys.readouterr()
        response = post_token(self.client, body, headers)
        entries = log_entries(self.capsys.readouterr().out)
        payload = response.get_json()
        assert isinstance(payload, dict)
        return TokenCall(response.status_code, payload, entries)


Configure = Callable[..., TokenFunction]


@pytest.fixture()
def call_token(
    make_client: AppFactory,
    service_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Configure]:
    """Build the token function with ``service_env`` plus extra settings."""

    def configure(**env: str) -> TokenFunction:
        capsys.readouterr()
        client = make_client("token", {**service_env, **env})
        startup = log_entries(capsys.readouterr().out)
        return TokenFunction(client, capsys, startup)

    yield configure


def utc_now() -> datetime.datetime:
    """Return the current time, aware, in UTC."""
    return datetime.datetime.now(datetime.UTC)
