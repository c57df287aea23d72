"""Render every generated deployment file from the one deployment config file.

deploy.sh, verify.sh and teardown.sh call this module with a subcommand, so the
config is parsed and validated in one place:

- ``shell-vars`` prints shell assignments (names, issuer, layout arrays) to ``eval``.
- ``env-vars`` writes the YAML file for ``gcloud functions deploy --env-vars-file``.
- ``header-flags`` prints one ``NAME:{variable}`` custom request header per line.
- ``trust-config`` and ``server-tls-policy`` write the mTLS resources for import.
- ``url-map`` writes the URL map with its routing and header actions for import.

Run it from the repository root as ``python -m deploy.render SUBCOMMAND --config
FILE``. The header names and load balancer variables come from
``shared/lb_headers.py``, the table that the functions read, so they cannot drift.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509

from shared import lb_headers

LAYOUTS = ("single-neg", "root")
AUTH_FLOWS = "xlb-mtls-client-credentials"
REDACTED = "<redacted>"
LB_SECRET_ENV = "LB_SECRET"

# Per backend service, at most 16 custom request headers and 8 KB of names plus
# values before expansion:
# https://cloud.google.com/load-balancing/docs/https/custom-headers-global
MAX_CUSTOM_HEADERS = 16
MAX_CUSTOM_HEADER_BYTES = 8 * 1024

# Attribute mapping of the original deployment: the subject is the client id and
# the certificate facts become attributes usable in IAM principal sets.
ATTRIBUTE_MAPPING = (
    ("google.subject", "assertion.client_id"),
    ("attribute.client_x5_spiffe", "assertion.client.x5_spiffe"),
    ("attribute.client_x5_dnssan", "assertion.client.x5_dnssan"),
    ("attribute.client_x5_urisan", "assertion.client.x5_urisan"),
    ("attribute.client_x5_sha256", "assertion.client.x5_sha256"),
    ("attribute.client_x5_serial", "assertion.client.x5_serial"),
)

# Files the service reads at run time reach it as Secret Manager volumes. Each
# volume shadows its whole directory, so every file gets a directory of its own.
SECRET_MOUNT_ROOT = "/etc/token-service"

_KEY_LINE = re.compile(r"^(?P<key>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")
_PEM_BLOCK = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----\r?\n?", re.DOTALL
)
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
_RESOURCE_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_POOL_ID = re.compile(r"^[a-z0-9-]{4,32}$")
_FQDN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_RUNTIME = re.compile(r"^python3[1-9][0-9]$")
_MEMORY = re.compile(r"^[0-9]+(Mi|Gi|M|G)$")


class ConfigError(ValueError):
    """The deployment config file is invalid."""


@dataclass(frozen=True)
class Settings:
    """The validated deployment config, with paths resolved to absolute paths."""

    project_id: str
    project_number: str
    region: str
    name_prefix: str
    public_fqdn: str
    layout: str
    wif_pool_id: str
    wif_pool_display_name: str
    wif_provider_id: str
    token_validity: int
    client_id_header: str
    header_names: dict[str, str]
    ca_root_files: tuple[Path, ...]
    ca_intermediate_files: tuple[Path, ...]
    workers: int
    threads: int
    runtime: str
    memory: str
    max_instances: str
    optional_env: dict[str, str]
    client_policy_source: Path | None
    crl_source: Path | None
    trusted_ca_source: Path | None
    lb_secret_header: str


@dataclass(frozen=True)
class FileSecret:
    """A local file stored as a Secret Manager secret and mounted as a volume."""

    env_var: str
    secret: str
    source: Path
    mount_path: str


@dataclass(frozen=True)
class Backend:
    """One serverless NEG, the backend service in front of it, and its target."""

    neg: str
    backend_service: str
    neg_target_flag: str


@dataclass(frozen=True)
class Names:
    """Resource names, URLs and layout-dependent pieces derived from the settings."""

    service_account: str
    service_account_email: str
    token_function: str
    metadata_function: str
    address: str
    ssl_certificate: str
    trust_config: str
    server_tls_policy: str
    url_map: str
    https_proxy: str
    forwarding_rule: str
    backends: tuple[Backend, ...]
    issuer: str
    discovery_url: str
    token_url: str
    file_secrets: tuple[FileSecret, ...]
    lb_secret: str


# ---------------------------------------------------------------------------
# Config parsing


def parse_env_text(text: str) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines as a POSIX shell would assign them.

    Blank lines and ``#`` comments are skipped. A value is either single- or
    double-quoted as a whole, or unquoted without whitespace, in which case a
    trailing `` # comment`` is dropped. Anything else raises ConfigError, so the
    file means the same to this parser and to a shell that sources it.
    """
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _KEY_LINE.match(line)
        if match is None:
            raise ConfigError(f"line {number}: expected KEY=VALUE, got {raw!r}")
        key = match["key"]
        if key in values:
            raise ConfigError(f"line {number}: {key} is set twice")
        values[key] = _parse_value(match["value"], number)
    return values


def _parse_value(value: str, number: int) -> str:
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = value.find(quote, 1)
        rest = value[end + 1 :].strip() if end > 0 else ""
        if end < 0 or (rest and not rest.startswith("#")):
            raise ConfigError(f"line {number}: unbalanced quotes in {value!r}")
        inner = value[1:end]
        if quote == '"' and any(char in inner for char in "$`\\"):
            raise ConfigError(f"line {number}: use single quotes for $, ` or \\")
        return inner
    value = re.sub(r"\s+#.*$", "", value)
    if re.search(r"\s|['\"$`\\;&|<>()]", value):
        raise ConfigError(f"line {number}: quote the value {value!r}")
    return value


_KNOWN_KEYS = frozenset(
    {
        "PROJECT_ID",
        "PROJECT_NUMBER",
        "REGION",
        "NAME_PREFIX",
        "PUBLIC_FQDN",
        "LAYOUT",
        "WIF_POOL_ID",
        "WIF_POOL_DISPLAY_NAME",
        "WIF_PROVIDER_ID",
        "TOKEN_VALIDITY",
        "MTLS_HEADER_CLIENT_ID",
        "CA_ROOT_FILES",
        "CA_INTERMEDIATE_FILES",
        "WORKERS",
        "THREADS",
        "RUNTIME",
        "MEMORY",
        "MAX_INSTANCES",
        "UPSTREAM_TIMEOUT_SECONDS",
        "UPSTREAM_MAX_RETRIES",
        "UPSTREAM_DEADLINE_SECONDS",
        "JWKS_URI",
        "CLIENT_POLICY_SOURCE",
        "CRL_SOURCE",
        "TRUSTED_CA_SOURCE",
        "LB_SECRET_HEADER",
    }
    | {header.setting for header in lb_headers.CERTIFICATE_HEADERS}
    | {header.setting for header in lb_headers.OPTIONAL_HEADERS}
)

_OPTIONAL_PASS_THROUGH = (
    "UPSTREAM_TIMEOUT_SECONDS",
    "UPSTREAM_MAX_RETRIES",
    "UPSTREAM_DEADLINE_SECONDS",
    "JWKS_URI",
)


def load_settings(path: Path) -> Settings:
    """Read, validate and resolve the config file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    values = parse_env_text(text)
    unknown = sorted(set(values) - _KNOWN_KEYS)
    if unknown:
        raise ConfigError(f"unknown settings in {path}: {', '.join(unknown)}")
    return _build_settings(values, path.resolve().parent)


def _build_settings(values: dict[str, str], base: Path) -> Settings:
    get = values.get
    prefix = _matching(get("NAME_PREFIX", "token-service"), _RESOURCE_ID, "NAME_PREFIX")
    if not 6 <= len(prefix) <= 30:
        # The prefix is also the service account id, which takes 6 to 30 characters.
        raise ConfigError(f"NAME_PREFIX must be 6 to 30 characters, got {prefix!r}")
    headers = {
        **lb_headers.header_names(values),
        **lb_headers.optional_header_names(values),
    }
    _check_issuer_facts(values, headers)
    return Settings(
        project_id=_matching(
            _required(values, "PROJECT_ID"), _PROJECT_ID, "PROJECT_ID"
        ),
        project_number=_digits(get("PROJECT_NUMBER", ""), "PROJECT_NUMBER"),
        region=_matching(_required(values, "REGION"), _REGION, "REGION"),
        name_prefix=prefix,
        public_fqdn=_matching(_required(values, "PUBLIC_FQDN"), _FQDN, "PUBLIC_FQDN"),
        layout=_choice(get("LAYOUT", "single-neg"), LAYOUTS, "LAYOUT"),
        wif_pool_id=_pool_id(_required(values, "WIF_POOL_ID"), "WIF_POOL_ID"),
        wif_pool_display_name=get("WIF_POOL_DISPLAY_NAME", "Token Service clients"),
        wif_provider_id=_pool_id(
            get("WIF_PROVIDER_ID", "token-service"), "WIF_PROVIDER_ID"
        ),
        token_validity=_integer(get("TOKEN_VALIDITY", "5"), "TOKEN_VALIDITY", 1, 720),
        client_id_header=_client_id_header(get("MTLS_HEADER_CLIENT_ID", ""), headers),
        header_names=headers,
        ca_root_files=_paths(get("CA_ROOT_FILES", ""), base),
        ca_intermediate_files=_paths(get("CA_INTERMEDIATE_FILES", ""), base),
        workers=_integer(get("WORKERS", "1"), "WORKERS", 1, 64),
        threads=_integer(get("THREADS", "8"), "THREADS", 1, 1000),
        runtime=_matching(get("RUNTIME", "python312"), _RUNTIME, "RUNTIME"),
        memory=_matching(get("MEMORY", "512Mi"), _MEMORY, "MEMORY"),
        max_instances=_digits(get("MAX_INSTANCES", ""), "MAX_INSTANCES"),
        optional_env=_optional_env(values),
        client_policy_source=_optional_path(get("CLIENT_POLICY_SOURCE", ""), base),
        crl_source=_optional_path(get("CRL_SOURCE", ""), base),
        trusted_ca_source=_optional_path(get("TRUSTED_CA_SOURCE", ""), base),
        lb_secret_header=_optional_header(get("LB_SECRET_HEADER", ""), headers),
    )


def _check_issuer_facts(values: dict[str, str], headers: dict[str, str]) -> None:
    # The functions fail to start with a CRL but no issuer fact, or with a
    # trusted CA but no leaf to verify. Fail here, before anything is deployed.
    has_issuer = lb_headers.ISSUER_DN.key in headers or lb_headers.LEAF.key in headers
    if values.get("CRL_SOURCE") and not has_issuer:
        raise ConfigError(
            "CRL_SOURCE needs the issuer: set MTLS_HEADER_CLIENT_CERT_ISSUER_DN or "
            "MTLS_HEADER_CLIENT_CERT_LEAF (for example X-Client-Cert-Issuer-DN)"
        )
    if values.get("TRUSTED_CA_SOURCE") and lb_headers.LEAF.key not in headers:
        raise ConfigError(
            "TRUSTED_CA_SOURCE needs the leaf certificate: set "
            "MTLS_HEADER_CLIENT_CERT_LEAF (for example X-Client-Cert-Leaf)"
        )


def forwarded_headers(settings: Settings) -> list[lb_headers.MtlsHeader]:
    """Return the certificate headers to forward: the ten, then the opt-in ones."""
    optional = [
        header
        for header in lb_headers.OPTIONAL_HEADERS
        if header.key in settings.header_names
    ]
    return [*lb_headers.CERTIFICATE_HEADERS, *optional]


def _required(values: dict[str, str], key: str) -> str:
    value = values.get(key, "")
    if not value:
        raise ConfigError(f"{key} is missing from the config file")
    return value


def _matching(value: str, pattern: re.Pattern[str], key: str) -> str:
    if not pattern.fullmatch(value):
        raise ConfigError(f"{key}={value!r} is invalid (expected {pattern.pattern})")
    return value


def _choice(value: str, choices: Sequence[str], key: str) -> str:
    if value not in choices:
        raise ConfigError(
            f"{key}={value!r} is invalid; use one of {', '.join(choices)}"
        )
    return value


def _pool_id(value: str, key: str) -> str:
    _matching(value, _POOL_ID, key)
    if value.startswith("gcp-") or value.startswith("-") or value.endswith("-"):
        raise ConfigError(
            f"{key}={value!r} is invalid: it must not start with gcp- or a dash, "
            "or end with a dash"
        )
    return value


def _integer(value: str, key: str, low: int, high: int) -> int:
    if not re.fullmatch(r"[0-9]+", value) or not low <= int(value) <= high:
        raise ConfigError(f"{key}={value!r} must be an integer from {low} to {high}")
    return int(value)


def _digits(value: str, key: str) -> str:
    if value and not re.fullmatch(r"[0-9]+", value):
        raise ConfigError(f"{key}={value!r} must be digits only")
    return value


def _paths(value: str, base: Path) -> tuple[Path, ...]:
    return tuple(base / item for item in value.split(",") if item.strip())


def _optional_path(value: str, base: Path) -> Path | None:
    return base / value if value else None


def _client_id_header(value: str, headers: dict[str, str]) -> str:
    # The original deployment reads the client id from the SHA-256 fingerprint
    # header, which the load balancer sets for every presented certificate.
    name = value or headers[lb_headers.SHA256_FINGERPRINT.key]
    candidates = {
        headers[header.key].lower(): headers[header.key]
        for header in lb_headers.CLIENT_ID_CANDIDATES
    }
    if name.lower() not in candidates:
        raise ConfigError(
            f"MTLS_HEADER_CLIENT_ID={name!r} must name one of the certificate "
            f"headers {', '.join(sorted(candidates.values()))}"
        )
    return candidates[name.lower()]


def _optional_header(value: str, headers: dict[str, str]) -> str:
    if not value:
        return ""
    if not _HEADER_NAME.fullmatch(value):
        raise ConfigError(f"LB_SECRET_HEADER={value!r} is not a valid header name")
    if value.lower() in {name.lower() for name in headers.values()}:
        raise ConfigError(
            f"LB_SECRET_HEADER={value!r} clashes with a certificate header"
        )
    return value


def _optional_env(values: dict[str, str]) -> dict[str, str]:
    chosen = {key: values[key] for key in _OPTIONAL_PASS_THROUGH if values.get(key)}
    jwks_uri = chosen.get("JWKS_URI", "")
    if jwks_uri and not jwks_uri.startswith("https://"):
        raise ConfigError(f"JWKS_URI={jwks_uri!r} must be an https:// URL")
    return chosen


# ---------------------------------------------------------------------------
# Derived names


def derive_names(settings: Settings) -> Names:
    """Derive every resource name and URL from the settings."""
    prefix = settings.name_prefix
    token_function, metadata_function, backends = _layout_pieces(settings)
    issuer = _issuer(settings)
    return Names(
        service_account=prefix,
        service_account_email=f"{prefix}@{settings.project_id}.iam.gserviceaccount.com",
        token_function=token_function,
        metadata_function=metadata_function,
        address=f"{prefix}-ip",
        ssl_certificate=f"{prefix}-cert",
        trust_config=f"{prefix}-ca",
        server_tls_policy=f"{prefix}-mtls",
        url_map=f"{prefix}-url-map",
        https_proxy=f"{prefix}-https-proxy",
        forwarding_rule=f"{prefix}-https",
        backends=backends,
        issuer=issuer,
        discovery_url=f"{issuer}/.well-known/openid-configuration",
        token_url=f"https://{settings.public_fqdn}/token",
        file_secrets=_file_secrets(settings),
        lb_secret=f"{prefix}-lb-secret" if settings.lb_secret_header else "",
    )


def _layout_pieces(settings: Settings) -> tuple[str, str, tuple[Backend, ...]]:
    prefix = settings.name_prefix
    if settings.layout == "single-neg":
        # The NEG's URL mask takes the Cloud Run service name from the first path
        # segment, so the functions must be named exactly like their paths.
        single = Backend(
            f"{prefix}-neg", f"{prefix}-backend", "--cloud-run-url-mask=/<service>"
        )
        return "token", "metadata", (single,)
    token, metadata = f"{prefix}-token", f"{prefix}-metadata"
    return (
        token,
        metadata,
        (
            Backend(f"{token}-neg", f"{token}-backend", f"--cloud-run-service={token}"),
            Backend(
                f"{metadata}-neg",
                f"{metadata}-backend",
                f"--cloud-run-service={metadata}",
            ),
        ),
    )


def _issuer(settings: Settings) -> str:
    # No trailing slash: the issuer, the provider's issuer URI and the "iss" claim
    # are compared as strings, so all three use this one value.
    if settings.layout == "single-neg":
        return f"https://{settings.public_fqdn}/metadata"
    return f"https://{settings.public_fqdn}"


def _file_secrets(settings: Settings) -> tuple[FileSecret, ...]:
    pieces = (
        ("CLIENT_POLICY_FILE", "client-policy", settings.client_policy_source),
        ("CRL_FILE", "crl", settings.crl_source),
        ("TRUSTED_CA_FILE", "trusted-ca", settings.trusted_ca_source),
    )
    return tuple(
        FileSecret(
            env_var,
            f"{settings.name_prefix}-{slug}",
            source,
            f"{SECRET_MOUNT_ROOT}/{slug}/{source.name}",
        )
        for env_var, slug, source in pieces
        if source is not None
    )


def set_secrets_value(names: Names) -> str:
    """Return the ``--set-secrets`` value, or an empty string when none is set."""
    parts = [f"{item.mount_path}={item.secret}:latest" for item in names.file_secrets]
    if names.lb_secret:
        parts.append(f"{LB_SECRET_ENV}={names.lb_secret}:latest")
    return ",".join(parts)


# ---------------------------------------------------------------------------
# Generated content


def environment(
    settings: Settings, names: Names, project_number: str
) -> dict[str, str]:
    """Build the functions' environment variables (without secrets)."""
    env = {
        "AUTH_FLOWS": AUTH_FLOWS,
        "WORKLOAD_IDENITY_PROJECT_NUMBER": project_number,
        "WORKLOAD_IDENITY_POOL_ID": settings.wif_pool_id,
        "WORKLOAD_IDENITY_PROVIDER_ID": settings.wif_provider_id,
        "TOKEN_VALIDITY": str(settings.token_validity),
        "TOKEN_ISSUER": names.issuer,
        lb_headers.CLIENT_ID_SETTING: settings.client_id_header,
        "SERVICE_ACCOUNT_EMAIL": names.service_account_email,
        "GOOGLE_CLOUD_PROJECT": settings.project_id,
        "WORKERS": str(settings.workers),
        "THREADS": str(settings.threads),
    }
    for header in forwarded_headers(settings):
        env[header.setting] = settings.header_names[header.key]
    env.update(settings.optional_env)
    env.update({item.env_var: item.mount_path for item in names.file_secrets})
    if settings.lb_secret_header:
        env["LB_SECRET_HEADER"] = settings.lb_secret_header
    return env


def custom_request_headers(settings: Settings) -> list[str]:
    """Return ``NAME:{variable}`` for each certificate header, checked against limits.

    Raises:
        ConfigError: the headers exceed the backend service's limits.
    """
    headers = [
        f"{settings.header_names[header.key]}:{{{header.lb_variable}}}"
        for header in forwarded_headers(settings)
    ]
    if len(headers) > MAX_CUSTOM_HEADERS:
        raise ConfigError(f"{len(headers)} custom headers exceed {MAX_CUSTOM_HEADERS}")
    size = sum(len(item.encode()) for item in headers)
    if size > MAX_CUSTOM_HEADER_BYTES:
        raise ConfigError(f"custom headers take {size} bytes, over 8 KB")
    return headers


def attribute_mapping() -> str:
    """Return the provider's ``--attribute-mapping`` value."""
    return ",".join(f"{key}={value}" for key, value in ATTRIBUTE_MAPPING)


def _literal_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # Multi-line strings (PEM blocks) as literal blocks, so the file stays readable
    # and each certificate's bytes survive a load unchanged.
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(str, _literal_str)


def dump_yaml(document: Any) -> str:
    """Serialize ``document`` as block-style YAML, keeping the key order."""
    return yaml.dump(
        document, Dumper=_Dumper, sort_keys=False, default_flow_style=False
    )


def pem_certificates(path: Path) -> list[str]:
    """Return each PEM certificate block in ``path`` exactly as the file has it.

    Raises:
        ConfigError: the file is unreadable, holds no certificate, holds a block
            that does not parse, or holds a certificate that is not a CA.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read CA file {path}: {error}") from None
    blocks = _PEM_BLOCK.findall(data)
    if not blocks:
        raise ConfigError(f"{path} holds no PEM certificate")
    for block in blocks:
        _check_ca_certificate(block, path)
    return [block.decode("ascii") for block in blocks]


def _check_ca_certificate(block: bytes, path: Path) -> None:
    try:
        certificate = x509.load_pem_x509_certificate(block)
    except ValueError as error:
        raise ConfigError(f"{path} holds an invalid certificate: {error}") from None
    try:
        constraints = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints
        )
    except x509.ExtensionNotFound:
        raise ConfigError(f"{path}: certificate has no basicConstraints") from None
    if not constraints.value.ca:
        raise ConfigError(f"{path}: certificate {certificate.subject} is not a CA")


def trust_config(settings: Settings, names: Names) -> dict[str, Any]:
    """Build the Certificate Manager TrustConfig from the configured PEM files."""
    if not settings.ca_root_files:
        raise ConfigError("CA_ROOT_FILES is missing from the config file")
    store: dict[str, Any] = {
        "trustAnchors": [
            {"pemCertificate": pem}
            for path in settings.ca_root_files
            for pem in pem_certificates(path)
        ]
    }
    intermediates = [
        {"pemCertificate": pem}
        for path in settings.ca_intermediate_files
        for pem in pem_certificates(path)
    ]
    if intermediates:
        store["intermediateCas"] = intermediates
    return {"name": names.trust_config, "trustStores": [store]}


def server_tls_policy(settings: Settings, names: Names) -> dict[str, Any]:
    """Build the ServerTlsPolicy that asks for, but does not require, a certificate.

    STS fetches the discovery document through the same load balancer without a
    client certificate, so the mode must be ALLOW_INVALID_OR_MISSING_CLIENT_CERT.
    The functions then trust nothing unless the chain-verified header is "true".
    """
    return {
        "name": names.server_tls_policy,
        "mtlsPolicy": {
            "clientValidationMode": "ALLOW_INVALID_OR_MISSING_CLIENT_CERT",
            "clientValidationTrustConfig": (
                f"projects/{settings.project_id}/locations/global/"
                f"trustConfigs/{names.trust_config}"
            ),
        },
    }


def url_map(settings: Settings, names: Names, lb_secret: str) -> dict[str, Any]:
    """Build the URL map: routing plus header actions that clients cannot bypass.

    The path matcher's headerAction removes every header this service trusts, and
    the URL map's own headerAction, which the load balancer applies after the path
    matcher's, sets them again with ``replace: true``. A client-sent copy is
    therefore gone even when a variable expands to an empty value.
    """
    project = f"projects/{settings.project_id}/global/backendServices"
    services = [f"{project}/{backend.backend_service}" for backend in names.backends]
    trusted = [
        settings.header_names[header.key] for header in forwarded_headers(settings)
    ]
    added = [
        {
            "headerName": settings.header_names[header.key],
            "headerValue": f"{{{header.lb_variable}}}",
            "replace": True,
        }
        for header in forwarded_headers(settings)
    ]
    if settings.lb_secret_header:
        trusted.append(settings.lb_secret_header)
        added.append(
            {
                "headerName": settings.lb_secret_header,
                "headerValue": lb_secret,
                "replace": True,
            }
        )
    matcher = _path_matcher(settings, names, services)
    matcher["headerAction"] = {"requestHeadersToRemove": trusted}
    return {
        "name": names.url_map,
        "defaultService": services[-1],
        # Every host goes through the path matcher, so a request by IP address or
        # another Host header gets the same routing and header actions.
        "hostRules": [{"hosts": ["*"], "pathMatcher": "token-service"}],
        "pathMatchers": [matcher],
        "headerAction": {"requestHeadersToAdd": added},
    }


def _path_matcher(
    settings: Settings, names: Names, services: list[str]
) -> dict[str, Any]:
    if settings.layout == "root":
        token_service, metadata_service = services
        return {
            "name": "token-service",
            "defaultService": metadata_service,
            "pathRules": [{"paths": ["/token"], "service": token_service}],
        }
    # With the URL mask "/<service>", any path would reach any Cloud Run service
    # of that name in the region, so only the two functions' paths are routed and
    # everything else is redirected to the discovery document.
    return {
        "name": "token-service",
        "defaultUrlRedirect": {
            "pathRedirect": "/metadata/.well-known/openid-configuration",
            "redirectResponseCode": "FOUND",
            "stripQuery": True,
        },
        "pathRules": [
            {"paths": ["/token"], "service": services[0]},
            {"paths": ["/metadata", "/metadata/*"], "service": services[0]},
        ],
    }


def shell_assignments(settings: Settings, names: Names) -> list[str]:
    """Return ``NAME=value`` lines (and bash arrays) for deploy.sh to ``eval``."""
    scalars = {
        "PROJECT_ID": settings.project_id,
        "PROJECT_NUMBER": settings.project_number,
        "REGION": settings.region,
        "NAME_PREFIX": settings.name_prefix,
        "PUBLIC_FQDN": settings.public_fqdn,
        "LAYOUT": settings.layout,
        "WIF_POOL_ID": settings.wif_pool_id,
        "WIF_POOL_DISPLAY_NAME": settings.wif_pool_display_name,
        "WIF_PROVIDER_ID": settings.wif_provider_id,
        "RUNTIME": settings.runtime,
        "MEMORY": settings.memory,
        "MAX_INSTANCES": settings.max_instances,
        "SERVICE_ACCOUNT": names.service_account,
        "SERVICE_ACCOUNT_EMAIL": names.service_account_email,
        "TOKEN_FUNCTION": names.token_function,
        "METADATA_FUNCTION": names.metadata_function,
        "ADDRESS_NAME": names.address,
        "SSL_CERTIFICATE_NAME": names.ssl_certificate,
        "TRUST_CONFIG_NAME": names.trust_config,
        "SERVER_TLS_POLICY_NAME": names.server_tls_policy,
        "URL_MAP_NAME": names.url_map,
        "HTTPS_PROXY_NAME": names.https_proxy,
        "FORWARDING_RULE_NAME": names.forwarding_rule,
        "TOKEN_ISSUER": names.issuer,
        "DISCOVERY_URL": names.discovery_url,
        "TOKEN_URL": names.token_url,
        "ATTRIBUTE_MAPPING": attribute_mapping(),
        "SET_SECRETS": set_secrets_value(names),
        "LB_SECRET_HEADER": settings.lb_secret_header,
        "LB_SECRET_NAME": names.lb_secret,
        "CLIENT_ID_HEADER": settings.client_id_header,
        "PRESENT_HEADER": settings.header_names[lb_headers.PRESENT.key],
        "CHAIN_VERIFIED_HEADER": settings.header_names[lb_headers.CHAIN_VERIFIED.key],
    }
    arrays = {
        "NEG_NAMES": [backend.neg for backend in names.backends],
        "NEG_TARGET_FLAGS": [backend.neg_target_flag for backend in names.backends],
        "BACKEND_SERVICE_NAMES": [
            backend.backend_service for backend in names.backends
        ],
        "FILE_SECRET_NAMES": [item.secret for item in names.file_secrets],
        "FILE_SECRET_SOURCES": [str(item.source) for item in names.file_secrets],
    }
    lines = [f"{key}={shlex.quote(value)}" for key, value in scalars.items()]
    lines += [
        f"{key}=({' '.join(shlex.quote(item) for item in items)})"
        for key, items in arrays.items()
    ]
    return lines


# ---------------------------------------------------------------------------
# Command line


def _write(path: Path, text: str) -> None:
    # Generated files may hold the load balancer secret, so only the owner reads them.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def _command_shell_vars(
    args: argparse.Namespace, settings: Settings, names: Names
) -> None:
    print("\n".join(shell_assignments(settings, names)))


def _command_env_vars(
    args: argparse.Namespace, settings: Settings, names: Names
) -> None:
    number = args.project_number or settings.project_number
    if not number:
        raise ConfigError("the project number is unknown; set PROJECT_NUMBER")
    _write(args.out, dump_yaml(environment(settings, names, number)))


def _command_header_flags(
    args: argparse.Namespace, settings: Settings, names: Names
) -> None:
    print("\n".join(custom_request_headers(settings)))


def _command_trust_config(
    args: argparse.Namespace, settings: Settings, names: Names
) -> None:
    _write(args.out, dump_yaml(trust_config(settings, names)))


def _command_server_tls_policy(
    args: argparse.Namespace, settings: Settings, names: Names
) -> None:
    _write(args.out, dump_yaml(server_tls_policy(settings, names)))


def _command_url_map(
    args: argparse.Namespace, settings: Settings, names: Names
) -> None:
    secret = ""
    if settings.lb_secret_header:
        secret = REDACTED if args.redact_secret else os.environ.get(LB_SECRET_ENV, "")
        if not secret:
            raise ConfigError(
                f"LB_SECRET_HEADER is set, so {LB_SECRET_ENV} must be set"
            )
    _write(args.out, dump_yaml(url_map(settings, names, secret)))


_Command = Callable[[argparse.Namespace, Settings, Names], None]

_COMMANDS: dict[str, tuple[_Command, str]] = {
    "shell-vars": (_command_shell_vars, "print shell assignments for deploy.sh"),
    "env-vars": (_command_env_vars, "write the --env-vars-file YAML"),
    "header-flags": (_command_header_flags, "print the custom request headers"),
    "trust-config": (_command_trust_config, "write the TrustConfig YAML"),
    "server-tls-policy": (_command_server_tls_policy, "write the ServerTlsPolicy YAML"),
    "url-map": (_command_url_map, "write the URL map YAML"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in _COMMANDS.items():
        command = commands.add_parser(name, help=help_text)
        command.add_argument(
            "--config",
            type=Path,
            required=True,
            help="deployment config file (KEY=VALUE lines)",
        )
        if name in ("env-vars", "trust-config", "server-tls-policy", "url-map"):
            command.add_argument(
                "--out",
                type=Path,
                required=True,
                help="file to write (created with mode 0600)",
            )
        if name == "env-vars":
            command.add_argument(
                "--project-number",
                default="",
                help="project number when PROJECT_NUMBER is unset",
            )
        if name == "url-map":
            command.add_argument(
                "--redact-secret",
                action="store_true",
                help=f"write {REDACTED} in place of {LB_SECRET_ENV}",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; print the error and return 1 on an invalid config."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        handler, _ = _COMMANDS[args.command]
        handler(args, settings, derive_names(settings))
    except ConfigError as error:
        print(f"render: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
