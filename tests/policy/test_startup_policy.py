"""Start-up checks of the policy settings: every mistake stops the function."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from deploy.local import pki
from functions.service import load_service
from shared.config import ConfigurationError, LbSecret, load_settings
from tests.conftest import PROCESS_TIMEOUT_SECS, FunctionStarter, labels_of, log_entries
from tests.policy.conftest import (
    ISSUER_DN_HEADER,
    LEAF_HEADER,
    rule,
    write_pem,
    write_policy,
)

SECRET = "k3y-from-secret-manager-0123456789"


@pytest.fixture()
def restore_logging() -> Iterator[None]:
    """load_service installs a stdout handler; put the root logger back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def settings_error(env: dict[str, str]) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(env)
    return caught.value


def service_error(env: dict[str, str]) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        load_service(env)
    return caught.value


def test_defaults_change_nothing(service_env: dict[str, str]) -> None:
    settings = load_settings(service_env)
    assert settings.policy_files.client_policy is None
    assert settings.policy_files.crl is None
    assert settings.policy_files.trusted_ca is None
    assert settings.lb_secret is None
    assert dict(settings.headers.optional) == {}


# --- Files -------------------------------------------------------------------


@pytest.mark.parametrize(
    "variable", ["CLIENT_POLICY_FILE", "CRL_FILE", "TRUSTED_CA_FILE"]
)
def test_missing_file_rejected(
    service_env: dict[str, str], tmp_path: Path, variable: str
) -> None:
    env = {
        **service_env,
        variable: str(tmp_path / "absent.pem"),
        "MTLS_HEADER_CLIENT_CERT_LEAF": LEAF_HEADER,
    }
    error = settings_error(env)
    assert error.variable == variable
    assert "absent.pem" in str(error)


def test_invalid_policy_stops_service(
    service_env: dict[str, str],
    tmp_path: Path,
    restore_logging: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    policy = write_policy(
        tmp_path, {"rules": [rule("a"), rule("b"), rule("c", match={"dns_san": "a_b"})]}
    )
    error = service_error({**service_env, "CLIENT_POLICY_FILE": str(policy)})
    message = str(error)
    assert error.variable == "CLIENT_POLICY_FILE"
    assert str(policy) in message
    assert "rules[2].match.dns_san" in message
    assert "not a DNS name" in message
    (entry,) = log_entries(capsys.readouterr().out)
    assert entry["severity"] == "ERROR"
    assert labels_of(entry)["event"] == "config.invalid"


def test_dn_rule_without_dn_header_stops_service(
    service_env: dict[str, str], tmp_path: Path, restore_logging: None
) -> None:
    policy = write_policy(
        tmp_path,
        {"rules": [rule("blocked-ca", "deny", match={"issuer_dn": "CN=Old CA"})]},
    )
    error = service_error({**service_env, "CLIENT_POLICY_FILE": str(policy)})
    assert "rules[0].match.issuer_dn" in str(error)
    assert "MTLS_HEADER_CLIENT_CERT_ISSUER_DN" in str(error)


def test_crl_needs_issuer_source(service_env: dict[str, str], tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    crl.write_text("placeholder")
    error = settings_error({**service_env, "CRL_FILE": str(crl)})
    assert error.variable == "CRL_FILE"
    assert "MTLS_HEADER_CLIENT_CERT_ISSUER_DN" in str(error)
    assert "MTLS_HEADER_CLIENT_CERT_LEAF" in str(error)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"not a crl", id="garbage-der"),
        pytest.param(
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            id="pem-cert",
        ),
        pytest.param(
            b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n", id="bad-pem"
        ),
    ],
)
def test_unreadable_crl_stops_service(
    service_env: dict[str, str], tmp_path: Path, restore_logging: None, content: bytes
) -> None:
    crl = tmp_path / "crl.pem"
    crl.write_bytes(content)
    env = {
        **service_env,
        "CRL_FILE": str(crl),
        "MTLS_HEADER_CLIENT_CERT_ISSUER_DN": ISSUER_DN_HEADER,
    }
    error = service_error(env)
    assert error.variable == "CRL_FILE"
    assert "openssl crl" in str(error)


def test_crl_bundle_and_der_load(
    service_env: dict[str, str],
    tmp_path: Path,
    restore_logging: None,
    demo_ca: pki.IssuedCertificate,
    other_ca: pki.IssuedCertificate,
) -> None:
    bundle = tmp_path / "crls.pem"
    bundle.write_bytes(
        pki.create_crl(demo_ca, [1]).public_bytes(serialization.Encoding.PEM)
        + pki.create_crl(other_ca, [2]).public_bytes(serialization.Encoding.PEM)
    )
    der = tmp_path / "crl.der"
    der.write_bytes(
        pki.create_crl(demo_ca, [3]).public_bytes(serialization.Encoding.DER)
    )
    base = {**service_env, "MTLS_HEADER_CLIENT_CERT_ISSUER_DN": ISSUER_DN_HEADER}
    service = load_service({**base, "CRL_FILE": str(bundle)})
    lists = service.token._controls.revocation_lists
    assert lists is not None
    assert set(lists.issuers) == {"CN=policy tests root CA", "CN=policy tests other CA"}
    load_service({**base, "CRL_FILE": str(der)})


def test_crl_with_bad_signature_stops_service(
    service_env: dict[str, str],
    tmp_path: Path,
    restore_logging: None,
    demo_ca: pki.IssuedCertificate,
) -> None:
    impostor = pki.IssuedCertificate(demo_ca.certificate, pki.generate_private_key())
    crl = tmp_path / "crl.pem"
    crl.write_bytes(
        pki.create_crl(impostor, []).public_bytes(serialization.Encoding.PEM)
    )
    anchors = write_pem(tmp_path, "anchors.pem", [demo_ca.certificate])
    env = {
        **service_env,
        "CRL_FILE": str(crl),
        "TRUSTED_CA_FILE": str(anchors),
        "MTLS_HEADER_CLIENT_CERT_LEAF": LEAF_HEADER,
    }
    error = service_error(env)
    assert error.variable == "CRL_FILE"
    assert "not signed by that CA" in str(error)


def test_trusted_ca_needs_leaf_header(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.pem"
    anchors.write_text("placeholder")
    error = settings_error({**service_env, "TRUSTED_CA_FILE": str(anchors)})
    assert error.variable == "TRUSTED_CA_FILE"
    assert "MTLS_HEADER_CLIENT_CERT_LEAF" in str(error)


def test_trusted_ca_garbage_stops_service(
    service_env: dict[str, str], tmp_path: Path, restore_logging: None
) -> None:
    anchors = tmp_path / "anchors.pem"
    anchors.write_text("not a certificate")
    env = {
        **service_env,
        "TRUSTED_CA_FILE": str(anchors),
        "MTLS_HEADER_CLIENT_CERT_LEAF": LEAF_HEADER,
    }
    assert service_error(env).variable == "TRUSTED_CA_FILE"


# --- Opt-in header names ------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"MTLS_HEADER_CLIENT_CERT_LEAF": "X Leaf"}, "MTLS_HEADER_CLIENT_CERT_LEAF"),
        (
            {"MTLS_HEADER_CLIENT_CERT_LEAF": "x-client-cert-hash"},
            "MTLS_HEADER_CLIENT_CERT_LEAF",
        ),
        (
            {
                "MTLS_HEADER_CLIENT_CERT_SUBJECT_DN": "X-Client-Cert-DN",
                "MTLS_HEADER_CLIENT_CERT_ISSUER_DN": "X-Client-Cert-DN",
            },
            "MTLS_HEADER_CLIENT_CERT_ISSUER_DN",
        ),
    ],
)
def test_optional_header_clash_rejected(
    service_env: dict[str, str], changes: dict[str, str], variable: str
) -> None:
    assert settings_error({**service_env, **changes}).variable == variable


def test_optional_headers_read(service_env: dict[str, str]) -> None:
    settings = load_settings(
        {
            **service_env,
            "MTLS_HEADER_CLIENT_CERT_LEAF": " X-Leaf ",
            "MTLS_HEADER_CLIENT_CERT_CHAIN": "",
        }
    )
    assert dict(settings.headers.optional) == {"leaf": "X-Leaf"}


# --- LB secret ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        pytest.param(
            {"LB_SECRET_HEADER": "X-Lb-Secret"}, "LB_SECRET", id="header-only"
        ),
        pytest.param({"LB_SECRET": SECRET}, "LB_SECRET_HEADER", id="secret-only"),
        pytest.param(
            {"LB_SECRET_HEADER": "X-Lb-Secret", "LB_SECRET": "short-secret"},
            "LB_SECRET",
            id="too-short",
        ),
        pytest.param(
            {
                "LB_SECRET_HEADER": "X-Lb-Secret",
                "LB_SECRET": f"{SECRET},{SECRET}1,{SECRET}2",
            },
            "LB_SECRET",
            id="three-secrets",
        ),
        pytest.param(
            {"LB_SECRET_HEADER": "X-Lb-Secret", "LB_SECRET": f"{SECRET},"},
            "LB_SECRET",
            id="empty-second",
        ),
        pytest.param(
            {"LB_SECRET_HEADER": "X-Lb-Secret", "LB_SECRET": SECRET + "\x7f"},
            "LB_SECRET",
            id="control-character",
        ),
        pytest.param(
            {"LB_SECRET_HEADER": "X-Client-Cert-Hash", "LB_SECRET": SECRET},
            "LB_SECRET_HEADER",
            id="certificate-header",
        ),
        pytest.param(
            {"LB_SECRET_HEADER": "X Lb", "LB_SECRET": SECRET},
            "LB_SECRET_HEADER",
            id="bad-name",
        ),
    ],
)
def test_lb_secret_config_rejected(
    service_env: dict[str, str], changes: dict[str, str], variable: str
) -> None:
    error = settings_error({**service_env, **changes})
    assert error.variable == variable
    assert SECRET not in str(error)
    assert "short-secret" not in str(error)


def test_lb_secret_parsed_hidden(service_env: dict[str, str]) -> None:
    settings = load_settings(
        {
            **service_env,
            "LB_SECRET_HEADER": "X-Lb-Secret",
            "LB_SECRET": f" {SECRET} , {SECRET}9 ",
        }
    )
    assert settings.lb_secret == LbSecret("X-Lb-Secret", (SECRET, SECRET + "9"))
    assert SECRET not in repr(settings)


def test_start_up_log_names_no_secret(
    service_env: dict[str, str],
    restore_logging: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    load_service(
        {**service_env, "LB_SECRET_HEADER": "X-Lb-Secret", "LB_SECRET": SECRET}
    )
    out = capsys.readouterr().out
    (entry,) = log_entries(out)
    assert labels_of(entry)["lb_secret"] == "on"
    assert SECRET not in out


# --- The real command line ---------------------------------------------------


@pytest.mark.e2e
def test_invalid_policy_exits(
    start_function: FunctionStarter, service_env: dict[str, str], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - id: a\n    effect: maybe\n")
    handle = start_function("token", {**service_env, "CLIENT_POLICY_FILE": str(policy)})
    try:
        handle.process.wait(timeout=PROCESS_TIMEOUT_SECS)
    except subprocess.TimeoutExpired:
        pytest.fail("the function started with an invalid policy")
    assert handle.process.returncode != 0
    output = handle.stdout() + handle.stderr()
    assert "rules[0].effect" in output
    assert "allow or deny" in output
