"""Tests for deploy/render.py: config parsing and every generated file."""

from __future__ import annotations

import datetime
import subprocess
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy import render
from shared import lb_headers

Key = ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, issuer: str, key: Key, signer: Key, *, ca: bool
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def chain() -> tuple[bytes, bytes, bytes, bytes]:
    """Return PEMs of a root, two intermediates below it, and a leaf."""
    root_key, first_key, second_key, leaf_key = (
        ec.generate_private_key(ec.SECP256R1()) for _ in range(4)
    )
    root = _certificate("Root", "Root", root_key, root_key, ca=True)
    first = _certificate("Intermediate 1", "Root", first_key, root_key, ca=True)
    second = _certificate(
        "Intermediate 2", "Intermediate 1", second_key, first_key, ca=True
    )
    leaf = _certificate("client", "Intermediate 2", leaf_key, second_key, ca=False)
    return root, first, second, leaf


BASE_CONFIG = {
    "PROJECT_ID": "test-project",
    "REGION": "europe-west1",
    "NAME_PREFIX": "ts-test",
    "PUBLIC_FQDN": "token.example.com",
    "WIF_POOL_ID": "test-pool",
    "CA_ROOT_FILES": "root.pem",
}


def write_config(tmp_path: Path, **overrides: str) -> Path:
    values = {**BASE_CONFIG, **overrides}
    path = tmp_path / "deploy.env"
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def settings_for(tmp_path: Path, **overrides: str) -> render.Settings:
    return render.load_settings(write_config(tmp_path, **overrides))


# ---------------------------------------------------------------------------
# parse_env_text


def test_parse_env_text_plain_quoted_and_comments() -> None:
    text = (
        "# comment\n\nA=plain\nB='two words'\nC=\"double\"\n"
        "D=value  # trailing comment\nE=\nF='a # b' # note\n"
    )

    assert render.parse_env_text(text) == {
        "A": "plain",
        "B": "two words",
        "C": "double",
        "D": "value",
        "E": "",
        "F": "a # b",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lower=1\n", "expected KEY=VALUE"),
        ("A=1\nA=2\n", "A is set twice"),
        ("A='open\n", "unbalanced quotes"),
        ("A=two words\n", "quote the value"),
        ("A=$(id)\n", "quote the value"),
        ('A="$HOME"\n', "use single quotes"),
        ("A='x' y\n", "unbalanced quotes"),
    ],
)
def test_parse_env_text_invalid_lines_rejected(text: str, message: str) -> None:
    with pytest.raises(render.ConfigError, match=message):
        render.parse_env_text(text)


# ---------------------------------------------------------------------------
# load_settings


def test_load_settings_defaults(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)

    assert settings.layout == "single-neg"
    assert settings.token_validity == 5
    assert settings.workers == 1
    assert settings.threads == 8
    assert settings.runtime == "python312"
    assert settings.client_id_header == "X-Client-Cert-Hash"
    assert settings.ca_root_files == (tmp_path / "root.pem",)
    assert settings.header_names == lb_headers.header_names()


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("0", False),  # below the minimum of one minute
        ("1", True),  # minimum
        ("720", True),  # maximum, twelve hours
        ("721", False),  # above the maximum
        ("5m", False),  # units are not accepted
    ],
)
def test_load_settings_token_validity_bounds(
    tmp_path: Path, value: str, valid: bool
) -> None:
    if valid:
        assert settings_for(tmp_path, TOKEN_VALIDITY=value).token_validity == int(value)
    else:
        with pytest.raises(render.ConfigError, match="TOKEN_VALIDITY"):
            settings_for(tmp_path, TOKEN_VALIDITY=value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("LAYOUT", "sideways", "LAYOUT='sideways' is invalid"),
        ("NAME_PREFIX", "short", "6 to 30 characters"),
        ("NAME_PREFIX", "Upper-Case", "NAME_PREFIX='Upper-Case' is invalid"),
        ("PUBLIC_FQDN", "https://token.example.com", "PUBLIC_FQDN"),
        ("WIF_POOL_ID", "gcp-reserved", "must not start with gcp-"),
        ("MTLS_HEADER_CLIENT_ID", "X-Client-Cert-Error", "must name one of"),
        ("LB_SECRET_HEADER", "X-Client-Cert-Hash", "clashes with a certificate header"),
        ("LB_SECRET_HEADER", "Bad Header", "quote the value"),
        ("JWKS_URI", "http://example.com/jwks", "must be an https:// URL"),
        ("TYPO_SETTING", "1", "unknown settings"),
        ("WORKERS", "0", "WORKERS"),
    ],
)
def test_load_settings_invalid_value_rejected(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    with pytest.raises(render.ConfigError, match=message):
        settings_for(tmp_path, **{key: value})


def test_load_settings_missing_required_rejected(tmp_path: Path) -> None:
    path = tmp_path / "deploy.env"
    path.write_text("REGION=europe-west1\n")

    with pytest.raises(render.ConfigError, match="PROJECT_ID is missing"):
        render.load_settings(path)


def test_load_settings_client_id_header_case_insensitive(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, MTLS_HEADER_CLIENT_ID="x-client-cert-spiffe")

    assert settings.client_id_header == "X-Client-Cert-Spiffe"


def test_example_config_is_valid() -> None:
    settings = render.load_settings(
        Path(render.__file__).with_name("config.example.env")
    )

    assert settings.layout == "single-neg"
    assert settings.client_id_header == "X-Client-Cert-Hash"


# ---------------------------------------------------------------------------
# Names, environment and headers


@pytest.mark.parametrize(
    ("layout", "issuer", "functions", "backends"),
    [
        (
            "single-neg",
            "https://token.example.com/metadata",
            ("token", "metadata"),
            ["ts-test-backend"],
        ),
        (
            "root",
            "https://token.example.com",
            ("ts-test-token", "ts-test-metadata"),
            ["ts-test-token-backend", "ts-test-metadata-backend"],
        ),
    ],
)
def test_derive_names_per_layout(
    tmp_path: Path,
    layout: str,
    issuer: str,
    functions: tuple[str, str],
    backends: list[str],
) -> None:
    names = render.derive_names(settings_for(tmp_path, LAYOUT=layout))

    assert names.issuer == issuer
    assert not names.issuer.endswith("/")
    assert names.discovery_url == f"{issuer}/.well-known/openid-configuration"
    assert names.token_url == "https://token.example.com/token"
    assert (names.token_function, names.metadata_function) == functions
    assert [backend.backend_service for backend in names.backends] == backends


def test_environment_contains_every_setting(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, UPSTREAM_TIMEOUT_SECONDS="7", WORKERS="3")
    names = render.derive_names(settings)

    env = render.environment(settings, names, "123")

    assert env["WORKLOAD_IDENITY_PROJECT_NUMBER"] == "123"
    assert env["WORKLOAD_IDENITY_POOL_ID"] == "test-pool"
    assert env["WORKLOAD_IDENITY_PROVIDER_ID"] == "token-service"
    assert env["TOKEN_ISSUER"] == names.issuer
    assert env["UPSTREAM_TIMEOUT_SECONDS"] == "7"
    assert env["WORKERS"] == "3"
    assert "UPSTREAM_MAX_RETRIES" not in env
    assert "LB_SECRET" not in env
    for header in lb_headers.CERTIFICATE_HEADERS:
        assert env[header.setting] == header.default_name


def test_environment_header_override_applies_everywhere(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path,
        MTLS_HEADER_CLIENT_CERT_SPIFFE_ID="X-Client-Cert-SPIFFE",
        MTLS_HEADER_CLIENT_ID="X-Client-Cert-SPIFFE",
    )
    names = render.derive_names(settings)

    env = render.environment(settings, names, "1")

    assert env["MTLS_HEADER_CLIENT_CERT_SPIFFE_ID"] == "X-Client-Cert-SPIFFE"
    assert env["MTLS_HEADER_CLIENT_ID"] == "X-Client-Cert-SPIFFE"
    assert "X-Client-Cert-SPIFFE:{client_cert_spiffe_id}" in (
        render.custom_request_headers(settings)
    )


def test_custom_request_headers_match_lb_table(tmp_path: Path) -> None:
    headers = render.custom_request_headers(settings_for(tmp_path))

    assert headers == [
        f"{header.default_name}:{{{header.lb_variable}}}"
        for header in lb_headers.CERTIFICATE_HEADERS
    ]
    assert len(headers) == 10


def test_custom_request_headers_over_8kb_rejected(tmp_path: Path) -> None:
    long_name = "X-" + "A" * 900
    overrides = {
        header.setting: f"{long_name}{index}"
        for index, header in enumerate(lb_headers.CERTIFICATE_HEADERS)
    }
    settings = settings_for(tmp_path, **overrides)

    with pytest.raises(render.ConfigError, match="over 8 KB"):
        render.custom_request_headers(settings)


def test_attribute_mapping_maps_client_id_to_subject() -> None:
    mapping = dict(item.split("=", 1) for item in render.attribute_mapping().split(","))

    assert mapping["google.subject"] == "assertion.client_id"
    assert mapping["attribute.client_x5_sha256"] == "assertion.client.x5_sha256"
    assert len(mapping) == 6


# ---------------------------------------------------------------------------
# TrustConfig


def _trust_config(tmp_path: Path, **overrides: str) -> dict[str, object]:
    settings = settings_for(tmp_path, **overrides)
    text = render.dump_yaml(
        render.trust_config(settings, render.derive_names(settings))
    )
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def test_trust_config_one_root_round_trips(
    tmp_path: Path, chain: tuple[bytes, bytes, bytes, bytes]
) -> None:
    root = chain[0]
    (tmp_path / "root.pem").write_bytes(root)

    trust = _trust_config(tmp_path)

    assert trust == {
        "name": "ts-test-ca",
        "trustStores": [{"trustAnchors": [{"pemCertificate": root.decode()}]}],
    }


@pytest.mark.parametrize("bundled", [True, False])
def test_trust_config_root_and_two_intermediates_round_trip(
    tmp_path: Path, chain: tuple[bytes, bytes, bytes, bytes], bundled: bool
) -> None:
    root, first, second, _ = chain
    (tmp_path / "root.pem").write_bytes(root)
    if bundled:
        (tmp_path / "intermediates.pem").write_bytes(first + second)
        files = "intermediates.pem"
    else:
        (tmp_path / "first.pem").write_bytes(first)
        (tmp_path / "second.pem").write_bytes(second)
        files = "first.pem,second.pem"

    trust = _trust_config(tmp_path, CA_INTERMEDIATE_FILES=files)

    store = trust["trustStores"][0]  # type: ignore[index]
    assert [item["pemCertificate"].encode() for item in store["trustAnchors"]] == [root]
    assert [item["pemCertificate"].encode() for item in store["intermediateCas"]] == [
        first,
        second,
    ]


def test_trust_config_crlf_pem_kept_byte_for_byte(
    tmp_path: Path, chain: tuple[bytes, bytes, bytes, bytes]
) -> None:
    root = chain[0].replace(b"\n", b"\r\n")
    (tmp_path / "root.pem").write_bytes(root)

    trust = _trust_config(tmp_path)

    anchor = trust["trustStores"][0]["trustAnchors"][0]  # type: ignore[index]
    assert anchor["pemCertificate"].encode() == root


def test_trust_config_leaf_rejected(
    tmp_path: Path, chain: tuple[bytes, bytes, bytes, bytes]
) -> None:
    (tmp_path / "root.pem").write_bytes(chain[3])

    with pytest.raises(render.ConfigError, match="is not a CA"):
        _trust_config(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a certificate\n", "holds no PEM certificate"),
        (
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "invalid certificate",
        ),
    ],
)
def test_trust_config_bad_file_rejected(
    tmp_path: Path, content: bytes, message: str
) -> None:
    (tmp_path / "root.pem").write_bytes(content)

    with pytest.raises(render.ConfigError, match=message):
        _trust_config(tmp_path)


def test_trust_config_missing_file_rejected(tmp_path: Path) -> None:
    with pytest.raises(render.ConfigError, match="cannot read CA file"):
        _trust_config(tmp_path)


# ---------------------------------------------------------------------------
# ServerTlsPolicy and URL map


def test_server_tls_policy_allows_missing_certificates(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)

    policy = render.server_tls_policy(settings, render.derive_names(settings))

    assert policy["mtlsPolicy"]["clientValidationMode"] == (
        "ALLOW_INVALID_OR_MISSING_CLIENT_CERT"
    )
    assert policy["mtlsPolicy"]["clientValidationTrustConfig"] == (
        "projects/test-project/locations/global/trustConfigs/ts-test-ca"
    )


def _url_map(tmp_path: Path, secret: str = "", **overrides: str) -> dict[str, object]:
    settings = settings_for(tmp_path, **overrides)
    text = render.dump_yaml(
        render.url_map(settings, render.derive_names(settings), secret)
    )
    loaded = yaml.safe_load(text)
    assert isinstance(loaded, dict)
    return loaded


def test_url_map_root_layout_routes_token(tmp_path: Path) -> None:
    url_map = _url_map(tmp_path, LAYOUT="root")

    backends = "projects/test-project/global/backendServices"
    matcher = url_map["pathMatchers"][0]  # type: ignore[index]
    assert url_map["defaultService"] == f"{backends}/ts-test-metadata-backend"
    assert url_map["hostRules"] == [{"hosts": ["*"], "pathMatcher": "token-service"}]
    assert matcher["defaultService"] == f"{backends}/ts-test-metadata-backend"
    assert matcher["pathRules"] == [
        {"paths": ["/token"], "service": f"{backends}/ts-test-token-backend"}
    ]


def test_url_map_single_neg_routes_only_function_paths(tmp_path: Path) -> None:
    url_map = _url_map(tmp_path)

    backend = "projects/test-project/global/backendServices/ts-test-backend"
    matcher = url_map["pathMatchers"][0]  # type: ignore[index]
    assert matcher["pathRules"] == [
        {"paths": ["/token"], "service": backend},
        {"paths": ["/metadata", "/metadata/*"], "service": backend},
    ]
    assert "defaultService" not in matcher
    assert matcher["defaultUrlRedirect"]["pathRedirect"] == (
        "/metadata/.well-known/openid-configuration"
    )


@pytest.mark.parametrize("layout", ["single-neg", "root"])
def test_url_map_removes_then_sets_every_trusted_header(
    tmp_path: Path, layout: str
) -> None:
    url_map = _url_map(
        tmp_path, secret="s3cr3t", LAYOUT=layout, LB_SECRET_HEADER="X-LB-Secret"
    )

    names = [header.default_name for header in lb_headers.CERTIFICATE_HEADERS]
    matcher = url_map["pathMatchers"][0]  # type: ignore[index]
    assert matcher["headerAction"] == {
        "requestHeadersToRemove": [*names, "X-LB-Secret"]
    }
    added = url_map["headerAction"]["requestHeadersToAdd"]  # type: ignore[index]
    assert added[-1] == {
        "headerName": "X-LB-Secret",
        "headerValue": "s3cr3t",
        "replace": True,
    }
    assert added[:-1] == [
        {
            "headerName": header.default_name,
            "headerValue": f"{{{header.lb_variable}}}",
            "replace": True,
        }
        for header in lb_headers.CERTIFICATE_HEADERS
    ]


def test_url_map_command_redacts_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, LB_SECRET_HEADER="X-LB-Secret")
    out = tmp_path / "url-map.yaml"
    monkeypatch.setenv("LB_SECRET", "s3cr3t")

    status = render.main(
        ["url-map", "--config", str(config), "--out", str(out), "--redact-secret"]
    )

    assert status == 0
    assert "s3cr3t" not in out.read_text()
    assert render.REDACTED in out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600


def test_url_map_command_without_secret_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, LB_SECRET_HEADER="X-LB-Secret")
    monkeypatch.delenv("LB_SECRET", raising=False)

    status = render.main(
        ["url-map", "--config", str(config), "--out", str(tmp_path / "url-map.yaml")]
    )

    assert status == 1
    assert "LB_SECRET must be set" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Command line


def test_env_vars_command_writes_yaml(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = tmp_path / "env.yaml"

    status = render.main(
        [
            "env-vars",
            "--config",
            str(config),
            "--out",
            str(out),
            "--project-number",
            "42",
        ]
    )

    assert status == 0
    env = yaml.safe_load(out.read_text())
    assert env["WORKLOAD_IDENITY_PROJECT_NUMBER"] == "42"
    assert env["TOKEN_VALIDITY"] == "5"


def test_env_vars_command_without_project_number_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)

    status = render.main(
        ["env-vars", "--config", str(config), "--out", str(tmp_path / "env.yaml")]
    )

    assert status == 1
    assert "project number is unknown" in capsys.readouterr().err


def test_shell_assignments_eval_in_bash(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, LAYOUT="root", WIF_POOL_DISPLAY_NAME="'Pool with spaces'"
    )
    script = "\n".join(
        render.shell_assignments(settings, render.derive_names(settings))
    )

    result = subprocess.run(
        [
            "bash",
            "-c",
            f'{script}\nprintf "%s|" "$WIF_POOL_DISPLAY_NAME" '
            '"${NEG_NAMES[@]}" "${NEG_TARGET_FLAGS[1]}" "$TOKEN_ISSUER"',
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )

    assert result.stdout.split("|")[:-1] == [
        "Pool with spaces",
        "ts-test-token-neg",
        "ts-test-metadata-neg",
        "--cloud-run-service=ts-test-metadata",
        "https://token.example.com",
    ]


def test_set_secrets_value_lists_files_and_lb_secret(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path,
        TRUSTED_CA_SOURCE="bundle.pem",
        MTLS_HEADER_CLIENT_CERT_LEAF="X-Client-Cert-Leaf",
        LB_SECRET_HEADER="X-LB-Secret",
    )

    value = render.set_secrets_value(render.derive_names(settings))

    assert value == (
        "/etc/token-service/trusted-ca/bundle.pem=ts-test-trusted-ca:latest,"
        "LB_SECRET=ts-test-lb-secret:latest"
    )


def test_optional_headers_forwarded(tmp_path: Path) -> None:
    config = write_optional_config(
        tmp_path,
        MTLS_HEADER_CLIENT_CERT_ISSUER_DN="X-Client-Cert-Issuer-DN",
        MTLS_HEADER_CLIENT_CERT_LEAF="X-Client-Cert-Leaf",
    )
    settings = render.load_settings(config)
    flags = render.custom_request_headers(settings)

    assert "X-Client-Cert-Issuer-DN:{client_cert_issuer_dn}" in flags
    assert "X-Client-Cert-Leaf:{client_cert_leaf}" in flags
    assert len(flags) == 12


def test_crl_without_issuer_rejected(tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    crl.write_text("placeholder")
    config = write_optional_config(tmp_path, CRL_SOURCE=str(crl))

    with pytest.raises(render.ConfigError, match="CRL_SOURCE needs the issuer"):
        render.load_settings(config)


def write_optional_config(tmp_path: Path, **extra: str) -> Path:
    """Write a minimal valid config with ``extra`` settings added."""
    root = tmp_path / "root.pem"
    root.write_text("placeholder")
    lines = {
        "PROJECT_ID": "demo-project",
        "REGION": "europe-west1",
        "PUBLIC_FQDN": "token.example.com",
        "WIF_POOL_ID": "demo-pool",
        "CA_ROOT_FILES": str(root),
        **extra,
    }
    path = tmp_path / "optional.env"
    path.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
    return path
