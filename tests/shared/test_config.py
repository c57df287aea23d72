"""Tests for shared.config: strict parsing of the environment into Settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shared import lb_headers
from shared.config import ConfigurationError, Settings, load_settings
from tests.conftest import (
    ISSUER,
    POOL_ID,
    PROJECT_NUMBER,
    PROVIDER_ID,
    TOKEN_AUDIENCE,
    XLB_MTLS_FLOW,
)


def load(env: dict[str, str], **overrides: str | None) -> Settings:
    """Load settings from ``env`` with variables set, or removed when None."""
    merged = dict(env)
    for name, value in overrides.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return load_settings(merged)


def config_error(env: dict[str, str], **overrides: str | None) -> ConfigurationError:
    """Return the ConfigurationError that loading raises."""
    with pytest.raises(ConfigurationError) as caught:
        load(env, **overrides)
    return caught.value


# --- Whole configuration ---------------------------------------------------


def test_valid_config_loads(service_env: dict[str, str]) -> None:
    settings = load(service_env)
    assert settings.auth_flows == (XLB_MTLS_FLOW,)
    assert settings.workload_identity.project_number == PROJECT_NUMBER
    assert settings.workload_identity.pool_id == POOL_ID
    assert settings.workload_identity.provider_id == PROVIDER_ID
    assert settings.workload_identity.token_audience == TOKEN_AUDIENCE
    assert settings.issuer == ISSUER
    assert settings.signing_key_files == (Path(service_env["SIGNING_KEY_FILE"]),)


def test_settings_are_frozen(service_env: dict[str, str]) -> None:
    settings = load(service_env)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.issuer = "https://other.example.com"  # type: ignore[misc]


def test_provider_resource_name(service_env: dict[str, str]) -> None:
    provider = load(service_env).workload_identity
    assert provider.resource_name == TOKEN_AUDIENCE.removeprefix("https:")


# --- AUTH_FLOWS ------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        XLB_MTLS_FLOW,
        f" {XLB_MTLS_FLOW} ",
        f"{XLB_MTLS_FLOW},",
        f"{XLB_MTLS_FLOW}, {XLB_MTLS_FLOW}",
    ],
)
def test_auth_flows_accepted(service_env: dict[str, str], value: str) -> None:
    assert set(load(service_env, AUTH_FLOWS=value).auth_flows) == {XLB_MTLS_FLOW}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "missing"),
        ("", "missing"),
        (" , ", "missing"),
        ("client-credentials", "'client-credentials'"),
        (f"{XLB_MTLS_FLOW},jwt-bearer", "'jwt-bearer'"),
        (XLB_MTLS_FLOW.upper(), repr(XLB_MTLS_FLOW.upper())),
    ],
)
def test_auth_flows_rejected(
    service_env: dict[str, str], value: str | None, shown: str
) -> None:
    error = config_error(service_env, AUTH_FLOWS=value)
    message = str(error)
    assert error.variable == "AUTH_FLOWS"
    assert "AUTH_FLOWS" in message
    assert shown in message
    assert XLB_MTLS_FLOW in message


# --- WORKLOAD_IDENITY_* and WORKLOAD_IDENTITY_* ----------------------------

SPELLINGS = [
    ("WORKLOAD_IDENITY_PROJECT_NUMBER", "WORKLOAD_IDENTITY_PROJECT_NUMBER"),
    ("WORKLOAD_IDENITY_POOL_ID", "WORKLOAD_IDENTITY_POOL_ID"),
    ("WORKLOAD_IDENITY_PROVIDER_ID", "WORKLOAD_IDENTITY_PROVIDER_ID"),
]


def _provider_values() -> dict[str, str]:
    return {
        "WORKLOAD_IDENITY_PROJECT_NUMBER": PROJECT_NUMBER,
        "WORKLOAD_IDENITY_POOL_ID": POOL_ID,
        "WORKLOAD_IDENITY_PROVIDER_ID": PROVIDER_ID,
    }


def _respelled(env: dict[str, str]) -> dict[str, str]:
    """Move every WORKLOAD_IDENITY_* value to the correct spelling."""
    result = dict(env)
    for misspelled, correct in SPELLINGS:
        result[correct] = result.pop(misspelled)
    return result


def test_correct_spelling_accepted(service_env: dict[str, str]) -> None:
    settings = load(_respelled(service_env))
    assert settings.workload_identity.token_audience == TOKEN_AUDIENCE


def test_both_spellings_same_value(service_env: dict[str, str]) -> None:
    env = {**service_env, **_respelled(service_env)}
    settings = load(env)
    assert settings.workload_identity.token_audience == TOKEN_AUDIENCE


@pytest.mark.parametrize(("misspelled", "correct"), SPELLINGS)
def test_spellings_conflict_rejected(
    service_env: dict[str, str], misspelled: str, correct: str
) -> None:
    other = "999999999999" if "NUMBER" in correct else "other-id"
    error = config_error(service_env, **{correct: other})
    message = str(error)
    assert misspelled in message
    assert correct in message
    assert repr(other) in message
    assert repr(_provider_values()[misspelled]) in message


@pytest.mark.parametrize(("misspelled", "correct"), SPELLINGS)
def test_missing_provider_part_rejected(
    service_env: dict[str, str], misspelled: str, correct: str
) -> None:
    error = config_error(service_env, **{misspelled: None})
    message = str(error)
    assert "missing" in message
    assert misspelled in message
    assert correct in message


@pytest.mark.parametrize(("misspelled", "correct"), SPELLINGS)
def test_blank_provider_part_missing(
    service_env: dict[str, str], misspelled: str, correct: str
) -> None:
    error = config_error(service_env, **{misspelled: "  "})
    assert "missing" in str(error)


@pytest.mark.parametrize("project_id", ["my-project", "acme-prod-123456"])
def test_project_id_as_number(service_env: dict[str, str], project_id: str) -> None:
    error = config_error(service_env, WORKLOAD_IDENITY_PROJECT_NUMBER=project_id)
    message = str(error)
    assert "WORKLOAD_IDENITY_PROJECT_NUMBER" in message
    assert repr(project_id) in message
    assert "project ID" in message
    assert "gcloud projects describe" in message


@pytest.mark.parametrize(
    "value",
    [
        "12345678901x",
        "-123",
        "1.5",
        "0x1f",
        pytest.param("\uff11\uff12\uff13", id="fullwidth"),
        pytest.param("\u0661\u0662\u0663", id="arabic-indic"),
        pytest.param("\u00b2", id="superscript"),
    ],
)
def test_project_number_not_digits(service_env: dict[str, str], value: str) -> None:
    error = config_error(service_env, WORKLOAD_IDENITY_PROJECT_NUMBER=value)
    assert repr(value) in str(error)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WORKLOAD_IDENTITY_PROJECT_NUMBER", "my-project"),
        ("WORKLOAD_IDENTITY_POOL_ID", "Bad_Pool"),
        ("WORKLOAD_IDENTITY_PROVIDER_ID", "x"),
    ],
)
def test_error_names_spelling_used(
    service_env: dict[str, str], variable: str, value: str
) -> None:
    env = _respelled(service_env)
    env[variable] = value
    error = config_error(env)
    assert error.variable == variable


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("abcd", True),  # 4 characters, the minimum
        ("a" * 32, True),  # 32 characters, the maximum
        ("pool-1", True),
        ("abc", False),  # 3 characters
        ("a" * 33, False),  # 33 characters
        ("Pool-1", False),  # uppercase
        ("pool_1", False),  # underscore
        ("pool/1", False),
    ],
)
@pytest.mark.parametrize(
    "variable", ["WORKLOAD_IDENITY_POOL_ID", "WORKLOAD_IDENITY_PROVIDER_ID"]
)
def test_pool_provider_id_format(
    service_env: dict[str, str], variable: str, value: str, valid: bool
) -> None:
    if valid:
        assert load(service_env, **{variable: value}) is not None
        return
    error = config_error(service_env, **{variable: value})
    message = str(error)
    assert variable in message
    assert repr(value) in message
    assert "4 to 32" in message


# --- TOKEN_VALIDITY --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, 300),  # default 5 minutes
        ("", 300),
        ("1", 60),  # lower bound
        ("5", 300),
        (" 30 ", 1800),
        ("720", 43200),  # upper bound, 12 hours
    ],
)
def test_token_validity_accepted(
    service_env: dict[str, str], value: str | None, seconds: int
) -> None:
    settings = load(service_env, TOKEN_VALIDITY=value)
    assert settings.token_validity_seconds == seconds


@pytest.mark.parametrize(
    "value",
    [
        "0",  # below the lower bound
        "721",  # above the upper bound
        "-5",
        "5.0",
        "5m",
        "five",
        "1e2",
    ],
)
def test_token_validity_rejected(service_env: dict[str, str], value: str) -> None:
    error = config_error(service_env, TOKEN_VALIDITY=value)
    message = str(error)
    assert error.variable == "TOKEN_VALIDITY"
    assert "TOKEN_VALIDITY" in message
    assert value in message
    assert "1 to 720" in message


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("1_0", id="underscore"),
        pytest.param("\uff15", id="fullwidth"),
    ],
)
def test_token_validity_odd_digits(service_env: dict[str, str], value: str) -> None:
    error = config_error(service_env, TOKEN_VALIDITY=value)
    assert error.variable == "TOKEN_VALIDITY"
    assert repr(value) in str(error)


# --- TOKEN_ISSUER ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "issuer"),
    [
        (None, None),
        ("", None),
        ("https://token.example.com", "https://token.example.com"),
        ("https://token.example.com/", "https://token.example.com"),
        ("https://token.example.com//", "https://token.example.com"),
        ("https://token.example.com/metadata/", "https://token.example.com/metadata"),
        ("https://token.example.com:8443", "https://token.example.com:8443"),
        (" https://token.example.com ", "https://token.example.com"),
    ],
)
def test_https_issuer_accepted(
    service_env: dict[str, str], value: str | None, issuer: str | None
) -> None:
    assert load(service_env, TOKEN_ISSUER=value).issuer == issuer


@pytest.mark.parametrize(
    "value",
    [
        "http://token.example.com",
        "token.example.com",
        "https://",
        "https:///path",
        "ftp://token.example.com",
        "https://token.example.com?tenant=1",
        "https://token.example.com#top",
        "https://user@token.example.com",
    ],
)
def test_bad_issuer_rejected(service_env: dict[str, str], value: str) -> None:
    error = config_error(service_env, TOKEN_ISSUER=value)
    message = str(error)
    assert error.variable == "TOKEN_ISSUER"
    assert repr(value) in message
    assert "https://" in message


@pytest.mark.parametrize(
    "value", ["https://token.example.com:99999", "https://token.example.com:port"]
)
def test_issuer_bad_port_rejected(service_env: dict[str, str], value: str) -> None:
    error = config_error(service_env, TOKEN_ISSUER=value)
    assert error.variable == "TOKEN_ISSUER"
    assert repr(value) in str(error)


# --- MTLS_HEADER_* ---------------------------------------------------------


def test_header_names_default(service_env: dict[str, str]) -> None:
    headers = load(service_env).headers
    for header in lb_headers.CERTIFICATE_HEADERS:
        assert headers[header.key] == header.default_name
    assert headers.client_id == "X-Client-Cert-Spiffe"


def test_header_default_names() -> None:
    defaults = {h.setting: h.default_name for h in lb_headers.CERTIFICATE_HEADERS}
    assert defaults == {
        "MTLS_HEADER_CLIENT_CERT_PRESENT": "X-Client-Cert-Present",
        "MTLS_HEADER_CLIENT_CERT_CHAIN_VERIFIED": "X-Client-Cert-Chain-Verified",
        "MTLS_HEADER_CLIENT_CERT_ERROR": "X-Client-Cert-Error",
        "MTLS_HEADER_CLIENT_CERT_SHA256_FINGERPRINT": "X-Client-Cert-Hash",
        "MTLS_HEADER_CLIENT_CERT_SERIAL_NUMBER": "X-Client-Cert-Serial-Number",
        "MTLS_HEADER_CLIENT_CERT_SPIFFE_ID": "X-Client-Cert-Spiffe",
        "MTLS_HEADER_CLIENT_CERT_URI_SANS": "X-Client-Cert-URI-SANs",
        "MTLS_HEADER_CLIENT_CERT_DNSNAME_SANS": "X-Client-Cert-DNSName-SANs",
        "MTLS_HEADER_CLIENT_CERT_VALID_NOT_BEFORE": "X-Client-Cert-Valid-Not-Before",
        "MTLS_HEADER_CLIENT_CERT_VALID_NOT_AFTER": "X-Client-Cert-Valid-Not-After",
    }


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("X-Client-Cert-Spiffe", "spiffe_id"),
        ("X-Client-Cert-DNSName-SANs", "dnsname_sans"),
        ("X-Client-Cert-URI-SANs", "uri_sans"),
        ("X-Client-Cert-Hash", "sha256_fingerprint"),
        ("x-client-cert-hash", "sha256_fingerprint"),  # names are case-insensitive
    ],
)
def test_client_id_header_allowed(
    service_env: dict[str, str], value: str, key: str
) -> None:
    headers = load(service_env, MTLS_HEADER_CLIENT_ID=value).headers
    assert headers.client_id_key == key


@pytest.mark.parametrize(
    "value",
    [
        "X-Client-Cert-Present",
        "X-Client-Cert-Chain-Verified",
        "X-Client-Cert-Serial-Number",
        "X-Client-Cert-Error",
        "X-Forwarded-For",
    ],
)
def test_client_id_header_rejected(service_env: dict[str, str], value: str) -> None:
    error = config_error(service_env, MTLS_HEADER_CLIENT_ID=value)
    message = str(error)
    assert error.variable == "MTLS_HEADER_CLIENT_ID"
    assert repr(value) in message
    for allowed in (
        "X-Client-Cert-Spiffe",
        "X-Client-Cert-DNSName-SANs",
        "X-Client-Cert-URI-SANs",
        "X-Client-Cert-Hash",
    ):
        assert allowed in message


def test_client_id_follows_override(service_env: dict[str, str]) -> None:
    headers = load(
        service_env,
        MTLS_HEADER_CLIENT_CERT_SHA256_FINGERPRINT="X-Mtls-Fingerprint",
        MTLS_HEADER_CLIENT_ID="X-Mtls-Fingerprint",
    ).headers
    assert headers.client_id == "X-Mtls-Fingerprint"
    assert headers.client_id_key == "sha256_fingerprint"


def test_client_id_old_name_rejected(service_env: dict[str, str]) -> None:
    error = config_error(
        service_env,
        MTLS_HEADER_CLIENT_CERT_SHA256_FINGERPRINT="X-Mtls-Fingerprint",
        MTLS_HEADER_CLIENT_ID="X-Client-Cert-Hash",
    )
    assert "X-Mtls-Fingerprint" in str(error)


@pytest.mark.parametrize(
    "setting", [header.setting for header in lb_headers.CERTIFICATE_HEADERS]
)
@pytest.mark.parametrize("value", ["X Client", "X-Client:", "X-Clïent", "(x)"])
def test_header_name_invalid(
    service_env: dict[str, str], setting: str, value: str
) -> None:
    error = config_error(service_env, **{setting: value})
    assert error.variable == setting
    assert repr(value) in str(error)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("MTLS_HEADER_CLIENT_CERT_CHAIN_VERIFIED", "X-Client-Cert-Present"),
        ("MTLS_HEADER_CLIENT_CERT_PRESENT", "x-client-cert-chain-verified"),
        ("MTLS_HEADER_CLIENT_CERT_SERIAL_NUMBER", "X-Client-Cert-Spiffe"),
    ],
)
def test_duplicate_header_names_rejected(
    service_env: dict[str, str], setting: str, value: str
) -> None:
    error = config_error(service_env, **{setting: value})
    assert setting in str(error)


def test_header_override_applies(service_env: dict[str, str]) -> None:
    headers = load(
        service_env, MTLS_HEADER_CLIENT_CERT_PRESENT="X-Mtls-Present"
    ).headers
    assert headers["present"] == "X-Mtls-Present"


# --- SIGNING_KEY_FILE ------------------------------------------------------


def test_signing_key_list_order(
    service_env: dict[str, str], key_files: dict[str, Path]
) -> None:
    value = f"{key_files['rsa2048']}, {key_files['ec_p256']}"
    settings = load(service_env, SIGNING_KEY_FILE=value)
    assert settings.signing_key_files == (key_files["rsa2048"], key_files["ec_p256"])
    assert settings.uses_local_key


def test_signing_key_unset_uses_iam(service_env: dict[str, str]) -> None:
    settings = load(service_env, SIGNING_KEY_FILE=None)
    assert not settings.uses_local_key


@pytest.mark.parametrize("name", ["missing.pem", ""])
def test_signing_key_not_found(
    service_env: dict[str, str], tmp_path: Path, name: str
) -> None:
    path = tmp_path / name  # "" is the folder itself, not a file
    error = config_error(service_env, SIGNING_KEY_FILE=str(path))
    message = str(error)
    assert error.variable == "SIGNING_KEY_FILE"
    assert str(path) in message
    assert "not found" in message


def test_second_key_not_found(
    service_env: dict[str, str], key_files: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "next.pem"
    error = config_error(
        service_env, SIGNING_KEY_FILE=f"{key_files['rsa2048']},{missing}"
    )
    assert str(missing) in str(error)


# --- Other settings --------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SERVICE_ACCOUNT_EMAIL", "not-an-email"),
        ("IAM_CREDENTIALS_ENDPOINT", "ftp://iam.example.com"),
        ("STS_ENDPOINT", "sts.example.com"),
        ("JWKS_URI", "https://"),
        ("UPSTREAM_TIMEOUT_SECONDS", "0"),
        ("UPSTREAM_TIMEOUT_SECONDS", "fast"),
        ("UPSTREAM_MAX_RETRIES", "6"),
        ("UPSTREAM_MAX_RETRIES", "1.5"),
        ("UPSTREAM_DEADLINE_SECONDS", "61"),
        ("LOG_EXECUTION_ID", "sometimes"),
    ],
)
def test_other_setting_rejected(
    service_env: dict[str, str], variable: str, value: str
) -> None:
    error = config_error(service_env, **{variable: value})
    assert error.variable == variable
    assert value in str(error)


def test_deadline_shorter_than_attempt(service_env: dict[str, str]) -> None:
    error = config_error(
        service_env, UPSTREAM_TIMEOUT_SECONDS="5", UPSTREAM_DEADLINE_SECONDS="2"
    )
    assert error.variable == "UPSTREAM_DEADLINE_SECONDS"
