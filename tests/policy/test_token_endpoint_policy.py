"""The token function as a policy point: each decision and each refusal.

Every refusal must write exactly one log entry, with the rule and the facts
it matched on. These tests check both the response and that entry.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from deploy.local import pki
from tests.policy.conftest import (
    CHAIN_HEADER,
    GRANT,
    ISSUER_DN_HEADER,
    LEAF_HEADER,
    OPTIONAL_HEADER_ENV,
    SCOPE,
    Configure,
    Mint,
    TokenCall,
    lb_headers_for,
    rule,
    utc_now,
    write_pem,
    write_policy,
)

DEMO_ACCOUNT = "demo-workload@demo-project.iam.gserviceaccount.com"


@pytest.fixture()
def device(mint: Mint) -> pki.IssuedCertificate:
    return mint(
        "device-7",
        organization="Example Devices",
        uris=("https://devices.example.com/device-7",),
        dns_names=("device-7.devices.example.com", "device-7.internal.example.org"),
    )


def with_policy(
    call_token: Configure, tmp_path: Path, *rules: dict[str, Any], **env: str
) -> Any:
    policy = write_policy(tmp_path, {"rules": list(rules)})
    return call_token(CLIENT_POLICY_FILE=str(policy), **env)


def assert_refused(call: TokenCall, status: int, error: str, reason: str) -> None:
    assert call.status == status
    assert call.body["error"] == error
    assert len(call.entries) == 1
    assert call.entries[0]["severity"] == "WARNING"
    assert call.labels["event"] == "token.refused"
    assert call.labels["reason"] == reason


# --- Without a policy --------------------------------------------------------


def test_no_policy_allows_verified(
    call_token: Configure, device: pki.IssuedCertificate
) -> None:
    call = call_token()(lb_headers_for(device.certificate))
    assert call.status == 200
    assert "policy_rule" not in call.labels


# --- Decisions ---------------------------------------------------------------


def test_allow_rule_issues_with_labels(
    call_token: Configure, tmp_path: Path, device: pki.IssuedCertificate
) -> None:
    call = with_policy(
        call_token,
        tmp_path,
        rule("devices", match={"dns_san": "*.devices.example.com"}),
    )(lb_headers_for(device.certificate))
    assert call.status == 200
    assert len(call.entries) == 1
    assert call.labels["event"] == "token.issued"
    assert call.labels["policy_rule"] == "devices"
    assert call.labels["policy_matched"] == "dns_san=device-7.devices.example.com"


def test_deny_rule_refused(
    call_token: Configure, tmp_path: Path, device: pki.IssuedCertificate
) -> None:
    call = with_policy(
        call_token,
        tmp_path,
        rule(
            "no-7",
            "deny",
            match={"spiffe_id": "spiffe://demo.example.com/device/device-7"},
        ),
        rule("everyone"),
    )(lb_headers_for(device.certificate))
    assert_refused(call, 401, "invalid_client", "policy_denied")
    assert call.labels["policy_rule"] == "no-7"
    assert call.labels["policy_matched"].startswith("spiffe_id=spiffe://")
    assert call.body["error_description"] == "Client authentication failed."


def test_no_matching_rule_refused(
    call_token: Configure, tmp_path: Path, device: pki.IssuedCertificate
) -> None:
    call = with_policy(
        call_token, tmp_path, rule("elsewhere", match={"dns_san": "*.example.net"})
    )(lb_headers_for(device.certificate))
    assert_refused(call, 401, "invalid_client", "policy_no_match")


def test_scope_outside_rule_refused(
    call_token: Configure, tmp_path: Path, device: pki.IssuedCertificate
) -> None:
    call = with_policy(call_token, tmp_path, rule("narrow", scopes=["openid"]))(
        lb_headers_for(device.certificate), f"{GRANT}&scope={SCOPE}"
    )
    assert_refused(call, 400, "invalid_scope", "scope_not_allowed")
    assert call.labels["policy_rule"] == "narrow"
    assert call.labels["scope_denied"] == SCOPE


def test_service_account_outside_rule_refused(
    call_token: Configure, tmp_path: Path, device: pki.IssuedCertificate
) -> None:
    call = with_policy(
        call_token,
        tmp_path,
        rule("ci", service_accounts=["ci-*@demo-project.iam.gserviceaccount.com"]),
    )(
        lb_headers_for(device.certificate),
        f"{GRANT}&scope={SCOPE}&service_account={DEMO_ACCOUNT}",
    )
    assert_refused(call, 400, "unauthorized_client", "service_account_not_allowed")


def test_rule_caps_lifetime(
    call_token: Configure, tmp_path: Path, device: pki.IssuedCertificate
) -> None:
    call = with_policy(
        call_token, tmp_path, rule("short", max_token_lifetime_minutes=1)
    )(lb_headers_for(device.certificate))
    assert call.status == 200
    assert call.claims["exp"] - call.claims["iat"] == 60
    assert call.body["expires_in"] == 60


def test_rule_claims_added(
    call_token: Configure, tmp_path: Path, device: pki.IssuedCertificate
) -> None:
    call = with_policy(
        call_token, tmp_path, rule("tagged", claims={"team": "fleet", "tier": "2"})
    )(lb_headers_for(device.certificate))
    client = call.claims["client"]
    assert client["team"] == "fleet"
    assert client["tier"] == "2"
    assert client["x5_dnssan"] == "device-7.devices.example.com"


@pytest.mark.parametrize("kind", ["serial_numbers", "sha256_fingerprints"])
def test_policy_revoked_refused(
    call_token: Configure,
    tmp_path: Path,
    device: pki.IssuedCertificate,
    kind: str,
) -> None:
    headers = lb_headers_for(device.certificate)
    value = {
        "serial_numbers": headers["X-Client-Cert-Serial-Number"].upper(),
        "sha256_fingerprints": headers["X-Client-Cert-Hash"],
    }[kind]
    policy = write_policy(
        tmp_path, {"rules": [rule("everyone")], "revoked": {kind: [value]}}
    )
    call = call_token(CLIENT_POLICY_FILE=str(policy))(headers)
    assert_refused(call, 401, "invalid_client", "certificate_revoked")
    assert call.labels["revoked_by"].startswith("policy_")


# --- Claims that every token carries -----------------------------------------


def test_cnf_thumbprint_of_certificate(
    call_token: Configure, device: pki.IssuedCertificate
) -> None:
    call = call_token()(lb_headers_for(device.certificate))
    der = device.certificate.public_bytes(serialization.Encoding.DER)
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=")
    assert call.claims["cnf"] == {"x5t#S256": expected.decode()}


def test_all_sans_listed(call_token: Configure, device: pki.IssuedCertificate) -> None:
    client = call_token()(lb_headers_for(device.certificate)).claims["client"]
    assert client["x5_dnssans"] == [
        "device-7.devices.example.com",
        "device-7.internal.example.org",
    ]
    assert client["x5_urisans"] == ["https://devices.example.com/device-7"]
    assert client["x5_dnssan"] == "device-7.devices.example.com"


# --- The leaf header ---------------------------------------------------------


def leaf_env(**extra: str) -> dict[str, str]:
    return {**OPTIONAL_HEADER_ENV, **extra}


def test_facts_come_from_leaf(
    call_token: Configure, device: pki.IssuedCertificate
) -> None:
    headers = lb_headers_for(device.certificate, optional=True)
    # Facts missing from the other headers are read from the leaf.
    for name in ("X-Client-Cert-DNSName-SANs", "X-Client-Cert-Spiffe"):
        headers[name] = ""
    call = call_token(**leaf_env())(headers)
    assert call.status == 200
    assert call.labels["cert_facts"] == "leaf"
    assert call.claims["sub"] == "spiffe://demo.example.com/device/device-7"
    assert call.claims["client"]["x5_dnssans"][0] == "device-7.devices.example.com"


def test_leaf_of_other_cert_refused(
    call_token: Configure, device: pki.IssuedCertificate, mint: Mint
) -> None:
    headers = lb_headers_for(device.certificate, optional=True)
    headers[LEAF_HEADER] = lb_headers_for(mint("other").certificate, optional=True)[
        LEAF_HEADER
    ]
    call = call_token(**leaf_env())(headers)
    assert_refused(call, 401, "invalid_client", "leaf_fingerprint_mismatch")


def test_leaf_without_fingerprint_refused(
    call_token: Configure, device: pki.IssuedCertificate
) -> None:
    headers = lb_headers_for(device.certificate, optional=True)
    headers["X-Client-Cert-Hash"] = ""
    call = call_token(**leaf_env())(headers)
    assert_refused(call, 401, "invalid_client", "leaf_fingerprint_mismatch")


def test_malformed_leaf_refused(
    call_token: Configure, device: pki.IssuedCertificate
) -> None:
    headers = lb_headers_for(device.certificate, optional=True)
    headers[LEAF_HEADER] = ":bm90IGEgY2VydGlmaWNhdGU=:"
    call = call_token(**leaf_env())(headers)
    assert_refused(call, 401, "invalid_client", "leaf_malformed")


def test_empty_leaf_uses_headers(
    call_token: Configure, device: pki.IssuedCertificate
) -> None:
    # The load balancer empties the leaf header above its size limit.
    headers = lb_headers_for(device.certificate, optional=True)
    headers[LEAF_HEADER] = ""
    call = call_token(**leaf_env())(headers)
    assert call.status == 200
    assert "cert_facts" not in call.labels


def test_unconfigured_leaf_header_ignored(
    call_token: Configure, device: pki.IssuedCertificate, mint: Mint
) -> None:
    headers = lb_headers_for(device.certificate)
    headers[LEAF_HEADER] = lb_headers_for(mint("other").certificate, optional=True)[
        LEAF_HEADER
    ]
    call = call_token()(headers)
    assert call.status == 200
    assert call.claims["client"]["x5_sha256"] == headers["X-Client-Cert-Hash"]


# --- TRUSTED_CA_FILE ---------------------------------------------------------


@pytest.fixture(scope="module")
def issuing_ca(demo_ca: pki.IssuedCertificate) -> pki.IssuedCertificate:
    return pki.create_intermediate_authority(demo_ca, "policy tests device CA")


def trusted_env(tmp_path: Path, ca: pki.IssuedCertificate) -> dict[str, str]:
    anchors = write_pem(tmp_path, "anchors.pem", [ca.certificate])
    return leaf_env(TRUSTED_CA_FILE=str(anchors))


def test_own_verification_replaces_headers(
    call_token: Configure,
    tmp_path: Path,
    demo_ca: pki.IssuedCertificate,
    issuing_ca: pki.IssuedCertificate,
    mint: Mint,
) -> None:
    leaf = mint("via-chain", ca=issuing_ca).certificate
    headers = lb_headers_for(
        leaf, [issuing_ca.certificate], anchors=[demo_ca.certificate], optional=True
    )
    assert headers[CHAIN_HEADER]
    # A front end that forwards every certificate without judging it.
    headers["X-Client-Cert-Chain-Verified"] = "false"
    del headers["X-Client-Cert-Present"]
    call = call_token(**trusted_env(tmp_path, demo_ca))(headers)
    assert call.status == 200
    assert call.labels["cert_chain_verified"] == "true"


def test_own_verification_rejects_unknown_ca(
    call_token: Configure,
    tmp_path: Path,
    demo_ca: pki.IssuedCertificate,
    other_ca: pki.IssuedCertificate,
    mint: Mint,
) -> None:
    leaf = mint("stranger", ca=other_ca).certificate
    # Headers that claim a verified chain, from a front end that trusts more.
    headers = lb_headers_for(leaf, optional=True)
    call = call_token(**trusted_env(tmp_path, demo_ca))(headers)
    assert_refused(call, 401, "invalid_client", "chain_verification_failed")


def test_own_verification_needs_chain(
    call_token: Configure,
    tmp_path: Path,
    demo_ca: pki.IssuedCertificate,
    issuing_ca: pki.IssuedCertificate,
    mint: Mint,
) -> None:
    leaf = mint("no-chain", ca=issuing_ca).certificate
    headers = lb_headers_for(
        leaf, [issuing_ca.certificate], anchors=[demo_ca.certificate], optional=True
    )
    headers[CHAIN_HEADER] = ""
    call = call_token(**trusted_env(tmp_path, demo_ca))(headers)
    assert_refused(call, 401, "invalid_client", "chain_verification_failed")


def test_trusted_ca_without_leaf_uses_headers(
    call_token: Configure,
    tmp_path: Path,
    demo_ca: pki.IssuedCertificate,
    device: pki.IssuedCertificate,
) -> None:
    headers = lb_headers_for(device.certificate, anchors=[demo_ca.certificate])
    headers["X-Client-Cert-Chain-Verified"] = "false"
    call = call_token(**trusted_env(tmp_path, demo_ca))(headers)
    assert_refused(call, 401, "invalid_client", "certificate_not_verified")


# --- DN headers --------------------------------------------------------------


def test_subject_dn_rule_with_dn_header(
    call_token: Configure, tmp_path: Path, device: pki.IssuedCertificate
) -> None:
    headers = lb_headers_for(device.certificate, optional=True)
    del headers[LEAF_HEADER]
    env = {
        "MTLS_HEADER_CLIENT_CERT_SUBJECT_DN": "X-Client-Cert-Subject-DN",
        "MTLS_HEADER_CLIENT_CERT_ISSUER_DN": "X-Client-Cert-Issuer-DN",
    }
    caller = with_policy(
        call_token,
        tmp_path,
        rule("by-dn", match={"subject_dn": "CN=device-7,O=Example Devices"}),
        **env,
    )
    call = caller(headers)
    assert call.status == 200
    assert call.labels["subject_dn"] == "CN=device-7,O=Example Devices"
    assert call.labels["issuer_dn"] == "CN=policy tests root CA"

    headers["X-Client-Cert-Subject-DN"] = ""
    assert_refused(caller(headers), 401, "invalid_client", "policy_no_match")


# --- CRL_FILE ----------------------------------------------------------------


def write_crl(
    tmp_path: Path, ca: pki.IssuedCertificate, serials: list[int], **dates: Any
) -> Path:
    crl = pki.create_crl(ca, serials, **dates)
    path = tmp_path / "crl.pem"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def crl_env(path: Path) -> dict[str, str]:
    return {
        "CRL_FILE": str(path),
        "MTLS_HEADER_CLIENT_CERT_ISSUER_DN": ISSUER_DN_HEADER,
    }


def test_crl_revoked_refused(
    call_token: Configure,
    tmp_path: Path,
    demo_ca: pki.IssuedCertificate,
    device: pki.IssuedCertificate,
    mint: Mint,
) -> None:
    crl = write_crl(tmp_path, demo_ca, [device.certificate.serial_number])
    caller = call_token(**crl_env(crl))
    call = caller(lb_headers_for(device.certificate, optional=True))
    assert_refused(call, 401, "invalid_client", "certificate_revoked")
    assert call.labels["revoked_by"] == "crl"
    assert caller(lb_headers_for(mint("fine").certificate, optional=True)).status == 200


def test_crl_of_other_issuer_ignored(
    call_token: Configure,
    tmp_path: Path,
    demo_ca: pki.IssuedCertificate,
    other_ca: pki.IssuedCertificate,
    mint: Mint,
) -> None:
    # Same serial, different issuer: not revoked.
    device = mint("same-serial", ca=other_ca)
    crl = write_crl(tmp_path, demo_ca, [device.certificate.serial_number])
    call = call_token(**crl_env(crl))(lb_headers_for(device.certificate, optional=True))
    assert call.status == 200


@pytest.mark.parametrize(
    ("cleared", "reason"),
    [
        ("X-Client-Cert-Issuer-DN", "revocation_status_unknown"),
        ("X-Client-Cert-Serial-Number", "revocation_status_unknown"),
    ],
)
def test_crl_fails_closed(
    call_token: Configure,
    tmp_path: Path,
    demo_ca: pki.IssuedCertificate,
    device: pki.IssuedCertificate,
    cleared: str,
    reason: str,
) -> None:
    crl = write_crl(tmp_path, demo_ca, [1])
    headers = lb_headers_for(device.certificate, optional=True)
    headers[cleared] = ""
    call = call_token(**crl_env(crl))(headers)
    assert_refused(call, 401, "invalid_client", reason)


def test_crl_issuer_from_leaf(
    call_token: Configure,
    tmp_path: Path,
    demo_ca: pki.IssuedCertificate,
    device: pki.IssuedCertificate,
) -> None:
    crl = write_crl(tmp_path, demo_ca, [device.certificate.serial_number])
    headers = lb_headers_for(device.certificate, optional=True)
    call = call_token(CRL_FILE=str(crl), MTLS_HEADER_CLIENT_CERT_LEAF=LEAF_HEADER)(
        headers
    )
    assert_refused(call, 401, "invalid_client", "certificate_revoked")


def test_stale_crl_warns_and_serves(
    call_token: Configure,
    tmp_path: Path,
    demo_ca: pki.IssuedCertificate,
    device: pki.IssuedCertificate,
) -> None:
    now = utc_now()
    crl = write_crl(
        tmp_path,
        demo_ca,
        [],
        last_update=now - datetime.timedelta(days=10),
        next_update=now - datetime.timedelta(days=3),
    )
    function = call_token(**crl_env(crl))
    (warning,) = [e for e in function.startup if e["severity"] == "WARNING"]
    labels = warning["logging.googleapis.com/labels"]
    assert labels["event"] == "config.crl_stale"
    assert labels["crl_issuer"] == "CN=policy tests root CA"
    assert "new Secret Manager version" in warning["message"]
    assert function(lb_headers_for(device.certificate, optional=True)).status == 200


# --- The load balancer secret ------------------------------------------------

SECRET = "k3y-from-secret-manager-0123456789"
NEXT_SECRET = "n3xt-key-from-secret-manager-98765"


def secret_env(value: str = SECRET) -> dict[str, str]:
    return {"LB_SECRET_HEADER": "X-Lb-Secret", "LB_SECRET": value}


@pytest.mark.parametrize(
    ("sent", "label"),
    [
        pytest.param(None, "missing", id="missing"),
        pytest.param("", "mismatch", id="empty"),
        pytest.param(SECRET[:-1], "mismatch", id="prefix"),
        pytest.param(SECRET + "x", "mismatch", id="longer"),
        pytest.param(f"{SECRET},{SECRET}", "mismatch", id="repeated"),
    ],
)
def test_lb_secret_required(
    call_token: Configure,
    device: pki.IssuedCertificate,
    sent: str | None,
    label: str,
) -> None:
    headers = lb_headers_for(device.certificate)
    if sent is not None:
        headers["X-Lb-Secret"] = sent
    call = call_token(**secret_env())(headers)
    assert_refused(call, 401, "invalid_client", "lb_secret_mismatch")
    assert call.labels["lb_secret"] == label
    assert SECRET not in str(call.entries)
    assert SECRET[:12] not in str(call.entries)


def test_lb_secret_accepted(
    call_token: Configure, device: pki.IssuedCertificate
) -> None:
    headers = {**lb_headers_for(device.certificate), "X-Lb-Secret": SECRET}
    call = call_token(**secret_env())(headers)
    assert call.status == 200
    assert SECRET not in str(call.entries)


@pytest.mark.parametrize("sent", [SECRET, NEXT_SECRET])
def test_lb_secret_rotation_accepts_both(
    call_token: Configure, device: pki.IssuedCertificate, sent: str
) -> None:
    headers = {**lb_headers_for(device.certificate), "X-Lb-Secret": sent}
    call = call_token(**secret_env(f"{NEXT_SECRET},{SECRET}"))(headers)
    assert call.status == 200
