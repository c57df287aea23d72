"""Security regressions of the policy point, each test named after its attack.

Every test sends what an attacker could send, through the token function as
functions-framework serves it, and checks that no token comes back.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from werkzeug.datastructures import Headers

from deploy.local import pki
from shared.claims import IdTokenRequest, build_id_token_claims
from shared.client_cert import ClientCertificate
from shared.config import ConfigurationError
from shared.policy import load_policy
from tests.conftest import AppFactory, log_entries, post_token
from tests.policy.conftest import (
    GRANT,
    LEAF_HEADER,
    OPTIONAL_HEADER_ENV,
    POLICY_VARIABLES,
    lb_headers_for,
    rule,
    write_pem,
    write_policy,
)

SECRET = "regression-lb-secret-0123456789"
SECRET_ENV = {"LB_SECRET_HEADER": "X-Lb-Secret", "LB_SECRET": SECRET}

Response = tuple[int, dict[str, Any], str]
Send = Callable[..., Response]


@pytest.fixture(autouse=True)
def _no_policy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in POLICY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="module")
def ca() -> pki.IssuedCertificate:
    return pki.create_certificate_authority("regression root CA")


@pytest.fixture(scope="module")
def rogue_ca() -> pki.IssuedCertificate:
    return pki.create_certificate_authority("regression rogue CA")


def issue(
    ca: pki.IssuedCertificate, name: str, **options: Any
) -> pki.IssuedCertificate:
    options.setdefault("spiffe_id", f"spiffe://example.org/device/{name}")
    options.setdefault("dns_names", (f"{name}.example.com",))
    return pki.issue_client_certificate(
        ca.certificate, ca.private_key, common_name=name, **options
    )


@pytest.fixture()
def token(
    make_client: AppFactory,
    service_env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> Iterator[Callable[..., Send]]:
    """Configure the token function; return a sender of one request."""

    def configure(**env: str) -> Send:
        client = make_client("token", {**service_env, **env})

        def send(headers: Mapping[str, str] | Headers, body: str = GRANT) -> Response:
            capsys.readouterr()
            response = post_token(client, body, headers)  # type: ignore[arg-type]
            out = capsys.readouterr().out
            assert len(log_entries(out)) == 1
            payload = response.get_json()
            assert isinstance(payload, dict)
            return response.status_code, payload, out

        return send

    yield configure


def assert_no_token(response: Response, reason: str) -> None:
    status, body, out = response
    assert status in (400, 401), body
    assert "id_token" not in body
    assert f'"reason":"{reason}"' in out


# --- Proof of origin ---------------------------------------------------------


def test_forged_verified_header_without_secret_rejected(
    token: Callable[..., Send], ca: pki.IssuedCertificate
) -> None:
    headers = lb_headers_for(issue(ca, "victim").certificate)
    assert_no_token(token(**SECRET_ENV)(headers), "lb_secret_mismatch")


def test_guessed_secret_prefix_rejected(
    token: Callable[..., Send], ca: pki.IssuedCertificate
) -> None:
    headers = {
        **lb_headers_for(issue(ca, "victim").certificate),
        "X-Lb-Secret": SECRET[:-1],
    }
    assert_no_token(token(**SECRET_ENV)(headers), "lb_secret_mismatch")


def test_secret_appended_to_forged_copy_rejected(
    token: Callable[..., Send], ca: pki.IssuedCertificate
) -> None:
    # A client copy and the load balancer's value, joined into one field.
    headers = Headers(lb_headers_for(issue(ca, "victim").certificate))
    headers.add("X-Lb-Secret", "guess")
    headers.add("X-Lb-Secret", SECRET)
    assert_no_token(token(**SECRET_ENV)(headers), "lb_secret_mismatch")


def test_lb_secret_never_logged(
    token: Callable[..., Send], ca: pki.IssuedCertificate
) -> None:
    cert = issue(ca, "client").certificate
    good = {**lb_headers_for(cert), "X-Lb-Secret": SECRET}
    wrong = {**lb_headers_for(cert), "X-Lb-Secret": SECRET + "x"}
    send = token(**SECRET_ENV)
    for headers in (good, wrong):
        _, _, out = send(headers)
        assert SECRET not in out


# --- The leaf header ---------------------------------------------------------


def test_leaf_swapped_for_other_cert_rejected(
    token: Callable[..., Send], ca: pki.IssuedCertificate
) -> None:
    # The attacker has the key of its own certificate and sends the public
    # certificate of a more privileged client as the leaf.
    own = lb_headers_for(issue(ca, "attacker").certificate, optional=True)
    victim = lb_headers_for(issue(ca, "admin").certificate, optional=True)
    headers = {**own, LEAF_HEADER: victim[LEAF_HEADER]}
    assert_no_token(token(**OPTIONAL_HEADER_ENV)(headers), "leaf_fingerprint_mismatch")


def test_leaf_without_fingerprint_rejected(
    token: Callable[..., Send], ca: pki.IssuedCertificate
) -> None:
    headers = lb_headers_for(issue(ca, "admin").certificate, optional=True)
    del headers["X-Client-Cert-Hash"]
    assert_no_token(token(**OPTIONAL_HEADER_ENV)(headers), "leaf_fingerprint_mismatch")


def test_malformed_leaf_not_ignored(
    token: Callable[..., Send], ca: pki.IssuedCertificate
) -> None:
    headers = lb_headers_for(issue(ca, "client").certificate, optional=True)
    headers[LEAF_HEADER] = headers[LEAF_HEADER][:-10] + ":"
    assert_no_token(token(**OPTIONAL_HEADER_ENV)(headers), "leaf_malformed")


def test_leaf_injected_without_certificate_rejected(
    token: Callable[..., Send], ca: pki.IssuedCertificate, tmp_path: Path
) -> None:
    # The front end saw no certificate; the leaf and hash came from the client.
    headers = lb_headers_for(issue(ca, "admin").certificate, optional=True)
    headers["X-Client-Cert-Present"] = "false"
    headers["X-Client-Cert-Chain-Verified"] = "false"
    anchors = write_pem(tmp_path, "anchors.pem", [ca.certificate])
    send = token(**OPTIONAL_HEADER_ENV, TRUSTED_CA_FILE=str(anchors))
    assert_no_token(send(headers), "leaf_without_certificate")


def test_verified_header_cannot_vouch_for_rogue_ca(
    token: Callable[..., Send],
    ca: pki.IssuedCertificate,
    rogue_ca: pki.IssuedCertificate,
    tmp_path: Path,
) -> None:
    headers = lb_headers_for(issue(rogue_ca, "rogue").certificate, optional=True)
    assert headers["X-Client-Cert-Chain-Verified"] == "true"
    anchors = write_pem(tmp_path, "anchors.pem", [ca.certificate])
    send = token(**OPTIONAL_HEADER_ENV, TRUSTED_CA_FILE=str(anchors))
    assert_no_token(send(headers), "chain_verification_failed")


def test_unconfigured_leaf_cannot_change_identity(
    token: Callable[..., Send], ca: pki.IssuedCertificate
) -> None:
    own = lb_headers_for(issue(ca, "attacker").certificate)
    victim = lb_headers_for(issue(ca, "admin").certificate, optional=True)
    status, body, _ = token()({**own, LEAF_HEADER: victim[LEAF_HEADER]})
    assert status == 200
    claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert claims["sub"] == "spiffe://example.org/device/attacker"


# --- Validity ----------------------------------------------------------------


def test_expired_allowlisted_cert_rejected(
    token: Callable[..., Send], ca: pki.IssuedCertificate
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert = issue(
        ca,
        "expired",
        not_before=now - datetime.timedelta(days=400),
        not_after=now - datetime.timedelta(days=35),
    ).certificate
    # An allowlisted certificate is "verified" by the load balancer.
    headers = lb_headers_for(cert)
    assert headers["X-Client-Cert-Chain-Verified"] == "true"
    assert_no_token(token()(headers), "certificate_expired")


def test_not_yet_valid_cert_rejected(
    token: Callable[..., Send], ca: pki.IssuedCertificate
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert = issue(
        ca,
        "future",
        not_before=now + datetime.timedelta(minutes=5),
        not_after=now + datetime.timedelta(days=30),
    ).certificate
    assert_no_token(token()(lb_headers_for(cert)), "certificate_not_yet_valid")


def test_token_never_outlives_certificate(
    token: Callable[..., Send], ca: pki.IssuedCertificate
) -> None:
    not_after = datetime.datetime.now(datetime.UTC).replace(
        microsecond=0
    ) + datetime.timedelta(minutes=2)
    cert = issue(ca, "short-lived", not_after=not_after).certificate
    status, body, _ = token(TOKEN_VALIDITY="720")(lb_headers_for(cert))
    assert status == 200
    claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert claims["exp"] <= not_after.timestamp()


# --- Policy ------------------------------------------------------------------


def test_policy_claim_cannot_override_x5_sha256(tmp_path: Path) -> None:
    policy = write_policy(tmp_path, {"rules": [rule(claims={"x5_sha256": "forged"})]})
    with pytest.raises(ConfigurationError, match=r"rules\[0\]\.claims\.x5_sha256"):
        load_policy(policy)


def test_extra_claims_cannot_shadow_certificate_facts() -> None:
    # Defence in depth below the loader: certificate facts are written last.
    cert = ClientCertificate(
        present=True, chain_verified=True, sha256_fingerprint="real"
    )
    claims = build_id_token_claims(
        IdTokenRequest(
            "https://i", "https://a", "c", cert, 0, 60, {"x5_sha256": "forged"}
        )
    )
    assert claims["client"]["x5_sha256"] == "real"


def test_duplicate_yaml_key_cannot_flip_effect(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rules:\n  - id: admins\n    effect: deny\n    effect: allow\n")
    with pytest.raises(ConfigurationError, match="duplicate key"):
        load_policy(path)


def test_yaml_number_serial_cannot_disable_deny(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "rules:\n  - id: stolen\n    effect: deny\n"
        "    match:\n      serial_number: 12:34:56\n"
    )
    with pytest.raises(ConfigurationError, match="quote values"):
        load_policy(path)


def test_deny_rule_on_missing_dn_source_stops_start(
    make_client: AppFactory, service_env: dict[str, str], tmp_path: Path
) -> None:
    policy = write_policy(
        tmp_path,
        {"rules": [rule("old-ca", "deny", match={"issuer_dn": "CN=Old CA"}), rule()]},
    )
    with pytest.raises(ConfigurationError, match="issuer_dn"):
        make_client("token", {**service_env, "CLIENT_POLICY_FILE": str(policy)})


@pytest.mark.parametrize(
    ("match", "spiffe_id", "dns_name"),
    [
        pytest.param(
            {"spiffe_trust_domain": "example.org"},
            "spiffe://example.org.evil.net/device/x",
            "x.example.com",
            id="trust-domain-suffix",
        ),
        pytest.param(
            {
                "spiffe_trust_domain": "example.org",
                "spiffe_path_prefix": "/device/admin",
            },
            "spiffe://example.org/device/administrator",
            "x.example.com",
            id="path-sibling",
        ),
        pytest.param(
            {"dns_san": "*.example.com"},
            "spiffe://example.org/device/x",
            "evilexample.com",
            id="dns-label-boundary",
        ),
        pytest.param(
            {"dns_san": "*.example.com"},
            "spiffe://example.org/device/x",
            "example.com.evil.net",
            id="dns-suffix-inside",
        ),
    ],
)
def test_lookalike_identity_not_allowed(
    token: Callable[..., Send],
    ca: pki.IssuedCertificate,
    tmp_path: Path,
    match: dict[str, str],
    spiffe_id: str,
    dns_name: str,
) -> None:
    policy = write_policy(tmp_path, {"rules": [rule("admins", match=match)]})
    cert = issue(
        ca, "lookalike", spiffe_id=spiffe_id, dns_names=(dns_name,)
    ).certificate
    assert_no_token(
        token(CLIENT_POLICY_FILE=str(policy))(lb_headers_for(cert)), "policy_no_match"
    )


def test_revoked_serial_in_other_case_rejected(
    token: Callable[..., Send], ca: pki.IssuedCertificate, tmp_path: Path
) -> None:
    cert = issue(ca, "stolen").certificate
    headers = lb_headers_for(cert)
    serial = headers["X-Client-Cert-Serial-Number"]
    policy = write_policy(
        tmp_path, {"rules": [rule()], "revoked": {"serial_numbers": [serial.upper()]}}
    )
    assert_no_token(
        token(CLIENT_POLICY_FILE=str(policy))(headers), "certificate_revoked"
    )


def test_crl_cannot_be_dodged_by_emptying_issuer(
    token: Callable[..., Send], ca: pki.IssuedCertificate, tmp_path: Path
) -> None:
    cert = issue(ca, "revoked")
    crl = tmp_path / "crl.der"
    crl.write_bytes(
        pki.create_crl(ca, [cert.certificate.serial_number]).public_bytes(
            serialization.Encoding.DER
        )
    )
    headers = lb_headers_for(cert.certificate, optional=True)
    headers["X-Client-Cert-Issuer-DN"] = ""
    send = token(
        CRL_FILE=str(crl), MTLS_HEADER_CLIENT_CERT_ISSUER_DN="X-Client-Cert-Issuer-DN"
    )
    assert_no_token(send(headers), "revocation_status_unknown")
