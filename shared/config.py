"""Settings of the token and metadata functions, read once from the environment.

Every variable the service reads is named here. ``load_settings`` parses them
strictly into a frozen ``Settings``; any invalid value raises
``ConfigurationError`` with the variable, the value and the fix, so a
misconfigured function stops at cold start instead of at its first request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shared import lb_headers

AUTH_FLOWS = "AUTH_FLOWS"
TOKEN_VALIDITY = "TOKEN_VALIDITY"  # minutes
TOKEN_ISSUER = "TOKEN_ISSUER"
SIGNING_KEY_FILE = "SIGNING_KEY_FILE"
SERVICE_ACCOUNT_EMAIL = "SERVICE_ACCOUNT_EMAIL"
IAM_CREDENTIALS_ENDPOINT = "IAM_CREDENTIALS_ENDPOINT"
STS_ENDPOINT = "STS_ENDPOINT"
JWKS_URI = "JWKS_URI"
UPSTREAM_TIMEOUT_SECONDS = "UPSTREAM_TIMEOUT_SECONDS"
UPSTREAM_MAX_RETRIES = "UPSTREAM_MAX_RETRIES"
UPSTREAM_DEADLINE_SECONDS = "UPSTREAM_DEADLINE_SECONDS"
GOOGLE_CLOUD_PROJECT = "GOOGLE_CLOUD_PROJECT"
LOG_EXECUTION_ID = "LOG_EXECUTION_ID"
CLIENT_POLICY_FILE = "CLIENT_POLICY_FILE"  # YAML or JSON client policy
CRL_FILE = "CRL_FILE"  # PEM or DER certificate revocation lists
TRUSTED_CA_FILE = "TRUSTED_CA_FILE"  # PEM trust anchors for the leaf header
LB_SECRET_HEADER = "LB_SECRET_HEADER"  # header that carries LB_SECRET
LB_SECRET = "LB_SECRET"  # shared secret, or two comma-separated during rotation

# Existing deployments use the misspelled names; both spellings are accepted.
WORKLOAD_IDENTITY_PROJECT_NUMBER = (
    "WORKLOAD_IDENITY_PROJECT_NUMBER",
    "WORKLOAD_IDENTITY_PROJECT_NUMBER",
)
WORKLOAD_IDENTITY_POOL_ID = ("WORKLOAD_IDENITY_POOL_ID", "WORKLOAD_IDENTITY_POOL_ID")
WORKLOAD_IDENTITY_PROVIDER_ID = (
    "WORKLOAD_IDENITY_PROVIDER_ID",
    "WORKLOAD_IDENTITY_PROVIDER_ID",
)

XLB_MTLS_FLOW = "xlb-mtls-client-credentials"
SUPPORTED_AUTH_FLOWS = (XLB_MTLS_FLOW,)

MIN_TOKEN_VALIDITY_MINUTES = 1
# signJwt rejects an exp claim more than 12 hours ahead.
MAX_TOKEN_VALIDITY_MINUTES = 720
DEFAULT_TOKEN_VALIDITY_MINUTES = 5

DEFAULT_STS_ENDPOINT = "https://sts.googleapis.com/v1/token"
DEFAULT_UPSTREAM_TIMEOUT_SECONDS = 3.0
DEFAULT_UPSTREAM_MAX_RETRIES = 2
DEFAULT_UPSTREAM_DEADLINE_SECONDS = 10.0

# Google's documented format for pool and provider IDs: 4 to 32 lowercase
# letters, digits and hyphens.
_WIF_ID_PATTERN = re.compile(r"[a-z0-9-]{4,32}")
# A shared secret must be hard to guess; deploy scripts generate longer ones.
MIN_LB_SECRET_LENGTH = 16
# One current secret, plus the previous one while a rotation is under way.
MAX_LB_SECRETS = 2
# Visible ASCII except the comma, which separates the secrets.
_LB_SECRET_PATTERN = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
# An RFC 7230 token, the syntax of an HTTP header name.
_HEADER_NAME_PATTERN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_EMAIL_PATTERN = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_TRUE_VALUES = ("1", "true", "t", "yes", "y", "on")
_FALSE_VALUES = ("", "0", "false", "f", "no", "n", "off")


class ConfigurationError(Exception):
    """An environment variable is missing or invalid.

    The message names the variable, the rejected value and the fix.
    """

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {message}")


@dataclass(frozen=True)
class WorkloadIdentityProvider:
    """The Workload Identity Federation provider that trusts this issuer."""

    project_number: str
    pool_id: str
    provider_id: str

    @property
    def resource_name(self) -> str:
        """The provider's full resource name, as STS expects it in ``audience``."""
        return (
            f"//iam.googleapis.com/projects/{self.project_number}/locations/global"
            f"/workloadIdentityPools/{self.pool_id}/providers/{self.provider_id}"
        )

    @property
    def token_audience(self) -> str:
        """The ``aud`` claim of issued ID tokens: the default provider audience."""
        return "https:" + self.resource_name


@dataclass(frozen=True)
class HeaderNames:
    """Names of the custom request headers that carry certificate facts."""

    by_key: Mapping[str, str]
    client_id_key: str
    optional: Mapping[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> str:
        return self.by_key[key]

    def optional_name(self, key: str) -> str | None:
        """Name of an opt-in header (``lb_headers.OPTIONAL_HEADERS``), if set."""
        return self.optional.get(key)

    @property
    def client_id(self) -> str:
        """Name of the header whose value is the client id."""
        return self.by_key[self.client_id_key]


@dataclass(frozen=True)
class UpstreamPolicy:
    """Timeouts and retries for calls to Google APIs."""

    attempt_timeout_seconds: float = DEFAULT_UPSTREAM_TIMEOUT_SECONDS
    max_retries: int = DEFAULT_UPSTREAM_MAX_RETRIES
    deadline_seconds: float = DEFAULT_UPSTREAM_DEADLINE_SECONDS


@dataclass(frozen=True)
class LbSecret:
    """The header that proves a request came through the load balancer.

    ``values`` contains one secret, or two while a rotation is under way; a
    request must carry one of them. ``__repr__`` hides the values so they
    cannot reach a log through the settings object.
    """

    header: str
    values: tuple[str, ...]

    def __repr__(self) -> str:
        return f"LbSecret(header={self.header!r}, values=<{len(self.values)} hidden>)"


@dataclass(frozen=True)
class PolicyFiles:
    """Files read at cold start that make the token endpoint a policy point."""

    client_policy: Path | None = None
    crl: Path | None = None
    trusted_ca: Path | None = None


@dataclass(frozen=True)
class Settings:
    """Configuration of one function instance, fixed at cold start."""

    auth_flows: tuple[str, ...]
    workload_identity: WorkloadIdentityProvider
    token_validity_seconds: int
    issuer: str | None
    headers: HeaderNames
    signing_key_files: tuple[Path, ...]
    service_account_email: str | None
    iam_credentials_endpoint: str | None
    sts_endpoint: str
    jwks_uri: str | None
    upstream: UpstreamPolicy = field(default_factory=UpstreamPolicy)
    project_id: str | None = None
    log_execution_id: bool = False
    policy_files: PolicyFiles = field(default_factory=PolicyFiles)
    lb_secret: LbSecret | None = None

    @property
    def uses_local_key(self) -> bool:
        """Whether tokens are signed with a local key instead of signJwt."""
        return bool(self.signing_key_files)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Parse and validate the service's configuration.

    Raises:
        ConfigurationError: A variable is missing or invalid.
    """
    headers = _header_names(environ)
    lb_secret = _lb_secret(environ, headers)
    return Settings(
        auth_flows=_auth_flows(environ),
        workload_identity=_workload_identity(environ),
        token_validity_seconds=_token_validity_minutes(environ) * 60,
        issuer=_issuer(environ),
        headers=headers,
        signing_key_files=_signing_key_files(environ),
        service_account_email=_service_account_email(environ),
        iam_credentials_endpoint=_endpoint(environ, IAM_CREDENTIALS_ENDPOINT),
        sts_endpoint=_endpoint(environ, STS_ENDPOINT) or DEFAULT_STS_ENDPOINT,
        jwks_uri=_endpoint(environ, JWKS_URI),
        upstream=_upstream_policy(environ),
        project_id=environ.get(GOOGLE_CLOUD_PROJECT, "").strip() or None,
        log_execution_id=_boolean(environ, LOG_EXECUTION_ID),
        policy_files=_policy_files(environ, headers),
        lb_secret=lb_secret,
    )


def _auth_flows(environ: Mapping[str, str]) -> tuple[str, ...]:
    raw = environ.get(AUTH_FLOWS, "")
    flows = tuple(flow.strip() for flow in raw.split(",") if flow.strip())
    if not flows:
        raise ConfigurationError(AUTH_FLOWS, f"missing; set it to {XLB_MTLS_FLOW!r}.")
    for flow in flows:
        if flow not in SUPPORTED_AUTH_FLOWS:
            raise ConfigurationError(
                AUTH_FLOWS,
                f"unknown flow {flow!r}; the supported flow is {XLB_MTLS_FLOW!r}.",
            )
    return flows


def _either_spelling(
    environ: Mapping[str, str], names: tuple[str, str]
) -> tuple[str, str]:
    """Return the value and the name of the variable that carried it."""
    misspelled, correct = names
    old = environ.get(misspelled, "").strip()
    new = environ.get(correct, "").strip()
    if old and new and old != new:
        raise ConfigurationError(
            correct,
            f"{correct}={new!r} conflicts with {misspelled}={old!r}; "
            "set only one of the two spellings.",
        )
    if new:
        return new, correct
    if old:
        return old, misspelled
    raise ConfigurationError(misspelled, f"missing; set {misspelled} (or {correct}).")


def _workload_identity(environ: Mapping[str, str]) -> WorkloadIdentityProvider:
    number, number_variable = _either_spelling(
        environ, WORKLOAD_IDENTITY_PROJECT_NUMBER
    )
    if not re.fullmatch(r"[0-9]+", number):
        hint = (
            "it looks like a project ID; "
            if re.fullmatch(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", number)
            else ""
        )
        raise ConfigurationError(
            number_variable,
            f"invalid value {number!r}: {hint}the project number is all digits. "
            "Find it with: gcloud projects describe PROJECT_ID "
            "--format='value(projectNumber)'.",
        )
    pool, pool_variable = _either_spelling(environ, WORKLOAD_IDENTITY_POOL_ID)
    provider, provider_variable = _either_spelling(
        environ, WORKLOAD_IDENTITY_PROVIDER_ID
    )
    for variable, value in ((pool_variable, pool), (provider_variable, provider)):
        if not _WIF_ID_PATTERN.fullmatch(value):
            raise ConfigurationError(
                variable,
                f"invalid value {value!r}: an ID is 4 to 32 lowercase letters, "
                "digits and hyphens, as shown by gcloud iam workload-identity-pools "
                "list.",
            )
    return WorkloadIdentityProvider(number, pool, provider)


def _token_validity_minutes(environ: Mapping[str, str]) -> int:
    raw = environ.get(TOKEN_VALIDITY, "").strip()
    if not raw:
        return DEFAULT_TOKEN_VALIDITY_MINUTES
    bounds = f"{MIN_TOKEN_VALIDITY_MINUTES} to {MAX_TOKEN_VALIDITY_MINUTES}"
    if not re.fullmatch(r"[0-9]{1,6}", raw):
        raise ConfigurationError(
            TOKEN_VALIDITY,
            f"invalid value {raw!r}: set a whole number of minutes from {bounds}.",
        )
    minutes = int(raw)
    if not MIN_TOKEN_VALIDITY_MINUTES <= minutes <= MAX_TOKEN_VALIDITY_MINUTES:
        raise ConfigurationError(
            TOKEN_VALIDITY,
            f"{minutes} minutes is out of range: the allowed range is {bounds} "
            "minutes, because signJwt rejects an exp more than 12 hours ahead.",
        )
    return minutes


def _issuer(environ: Mapping[str, str]) -> str | None:
    raw = environ.get(TOKEN_ISSUER, "").strip()
    if not raw:
        return None
    issuer = raw.rstrip("/")
    parts = urlsplit(issuer)
    try:
        parts.port  # noqa: B018 - raises ValueError for an invalid port
    except ValueError:
        raise ConfigurationError(
            TOKEN_ISSUER, f"invalid value {raw!r}: the port is not a number 0-65535."
        ) from None
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigurationError(
            TOKEN_ISSUER,
            f"invalid value {raw!r}: set an https:// URL such as "
            "https://token.example.com (Workload Identity Federation accepts only "
            "https issuers).",
        )
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ConfigurationError(
            TOKEN_ISSUER,
            f"invalid value {raw!r}: an issuer has no query, fragment or user info.",
        )
    return issuer


def _header_names(environ: Mapping[str, str]) -> HeaderNames:
    names = lb_headers.header_names(dict(environ))
    seen: dict[str, str] = {}
    for header in lb_headers.CERTIFICATE_HEADERS:
        name = names[header.key]
        _check_header_name(header.setting, name)
        # Two facts read from one header would let, say, the "present"
        # header stand in for "chain verified".
        other = seen.setdefault(name.lower(), header.setting)
        if other != header.setting:
            raise ConfigurationError(
                header.setting,
                f"header {name!r} is already read for {other}; give each "
                "certificate fact its own header.",
            )

    optional = _optional_header_names(environ, names)

    client_id_name = (
        environ.get(lb_headers.CLIENT_ID_SETTING, "").strip()
        or lb_headers.CLIENT_ID_DEFAULT
    )
    _check_header_name(lb_headers.CLIENT_ID_SETTING, client_id_name)
    for candidate in lb_headers.CLIENT_ID_CANDIDATES:
        if names[candidate.key].lower() == client_id_name.lower():
            return HeaderNames(
                by_key=names, client_id_key=candidate.key, optional=optional
            )

    allowed = ", ".join(names[c.key] for c in lb_headers.CLIENT_ID_CANDIDATES)
    raise ConfigurationError(
        lb_headers.CLIENT_ID_SETTING,
        f"invalid value {client_id_name!r}: the client id must come from one of "
        f"these headers: {allowed}.",
    )


def _optional_header_names(
    environ: Mapping[str, str], names: Mapping[str, str]
) -> dict[str, str]:
    """Check the opt-in header names: valid, and unlike every other header."""
    optional = lb_headers.optional_header_names(environ)
    settings = {header.key: header.setting for header in lb_headers.OPTIONAL_HEADERS}
    taken = {name.lower(): setting for setting, name in _named_settings(names)}
    for key, name in optional.items():
        _check_header_name(settings[key], name)
        other = taken.get(name.lower())
        if other is not None:
            raise ConfigurationError(
                settings[key],
                f"header {name!r} is already read for {other}; give each "
                "certificate fact its own header.",
            )
        taken[name.lower()] = settings[key]
    return optional


def _named_settings(names: Mapping[str, str]) -> list[tuple[str, str]]:
    return [
        (header.setting, names[header.key]) for header in lb_headers.CERTIFICATE_HEADERS
    ]


def _check_header_name(variable: str, name: str) -> None:
    if not _HEADER_NAME_PATTERN.fullmatch(name):
        raise ConfigurationError(
            variable,
            f"invalid header name {name!r}: use letters, digits and hyphens, "
            "such as X-Client-Cert-Hash.",
        )


def _signing_key_files(environ: Mapping[str, str]) -> tuple[Path, ...]:
    raw = environ.get(SIGNING_KEY_FILE, "").strip()
    paths = tuple(Path(part.strip()) for part in raw.split(",") if part.strip())
    for path in paths:
        if not path.is_file():
            raise ConfigurationError(
                SIGNING_KEY_FILE,
                f"file {str(path)!r} not found; set a comma-separated list of PEM "
                "private key files, or unset it to sign through IAM Credentials.",
            )
    return paths


def _policy_files(environ: Mapping[str, str], headers: HeaderNames) -> PolicyFiles:
    files = PolicyFiles(
        client_policy=_optional_file(environ, CLIENT_POLICY_FILE),
        crl=_optional_file(environ, CRL_FILE),
        trusted_ca=_optional_file(environ, TRUSTED_CA_FILE),
    )
    leaf = headers.optional_name(lb_headers.LEAF.key)
    issuer_dn = headers.optional_name(lb_headers.ISSUER_DN.key)
    if files.crl is not None and leaf is None and issuer_dn is None:
        raise ConfigurationError(
            CRL_FILE,
            "a CRL applies to the certificates of its issuer, so the issuer "
            f"must be known: set {lb_headers.ISSUER_DN.setting} (load balancer "
            f"variable {{{lb_headers.ISSUER_DN.lb_variable}}}) or "
            f"{lb_headers.LEAF.setting} ({{{lb_headers.LEAF.lb_variable}}}).",
        )
    if files.trusted_ca is not None and leaf is None:
        raise ConfigurationError(
            TRUSTED_CA_FILE,
            "the service verifies the leaf certificate it receives, so set "
            f"{lb_headers.LEAF.setting} (load balancer variable "
            f"{{{lb_headers.LEAF.lb_variable}}}) too, or unset {TRUSTED_CA_FILE}.",
        )
    return files


def _optional_file(environ: Mapping[str, str], variable: str) -> Path | None:
    raw = environ.get(variable, "").strip()
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise ConfigurationError(
            variable, f"file {raw!r} not found; set the path of a readable file."
        )
    return path


def _lb_secret(environ: Mapping[str, str], headers: HeaderNames) -> LbSecret | None:
    """Read LB_SECRET_HEADER and LB_SECRET, which are set together or not at all.

    Warning:
        Messages name the variable but never contain the secret.
    """
    header = environ.get(LB_SECRET_HEADER, "").strip()
    raw = environ.get(LB_SECRET, "").strip()
    if not header and not raw:
        return None
    if not header:
        raise ConfigurationError(
            LB_SECRET_HEADER,
            f"missing while {LB_SECRET} is set; set the header name that the "
            "load balancer sends the secret in, or unset both.",
        )
    if not raw:
        raise ConfigurationError(
            LB_SECRET,
            f"missing while {LB_SECRET_HEADER} is set; set the secret (from "
            "Secret Manager), or unset both.",
        )
    _check_header_name(LB_SECRET_HEADER, header)
    taken = [name for _, name in _named_settings(headers.by_key)]
    taken += list(headers.optional.values())
    if header.lower() in {name.lower() for name in taken}:
        raise ConfigurationError(
            LB_SECRET_HEADER,
            f"header {header!r} already carries a certificate fact; choose "
            "another name.",
        )
    return LbSecret(header, _secret_values(raw))


def _secret_values(raw: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in raw.split(","))
    if len(values) > MAX_LB_SECRETS:
        raise ConfigurationError(
            LB_SECRET,
            f"{len(values)} comma-separated secrets; set one, or two (the new "
            "and the previous one) during a rotation.",
        )
    for position, value in enumerate(values, start=1):
        if len(value) < MIN_LB_SECRET_LENGTH or not _LB_SECRET_PATTERN.fullmatch(value):
            raise ConfigurationError(
                LB_SECRET,
                f"secret {position} is invalid (value not shown): use at least "
                f"{MIN_LB_SECRET_LENGTH} visible ASCII characters without commas, "
                "such as the output of: openssl rand -base64 32.",
            )
    return values


def _service_account_email(environ: Mapping[str, str]) -> str | None:
    email = environ.get(SERVICE_ACCOUNT_EMAIL, "").strip()
    if email and not _EMAIL_PATTERN.fullmatch(email):
        raise ConfigurationError(
            SERVICE_ACCOUNT_EMAIL,
            f"invalid value {email!r}: set the service account's email, such as "
            "token-service@PROJECT_ID.iam.gserviceaccount.com.",
        )
    return email or None


def _endpoint(environ: Mapping[str, str], variable: str) -> str | None:
    raw = environ.get(variable, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            variable, f"invalid value {raw!r}: set an http:// or https:// URL."
        )
    return raw.rstrip("/")


def _upstream_policy(environ: Mapping[str, str]) -> UpstreamPolicy:
    timeout = _number(
        environ, UPSTREAM_TIMEOUT_SECONDS, DEFAULT_UPSTREAM_TIMEOUT_SECONDS, 0.1, 30
    )
    retries = int(_number(environ, UPSTREAM_MAX_RETRIES, 2, 0, 5, integer=True))
    deadline = _number(
        environ, UPSTREAM_DEADLINE_SECONDS, DEFAULT_UPSTREAM_DEADLINE_SECONDS, 0.5, 60
    )
    if deadline < timeout:
        raise ConfigurationError(
            UPSTREAM_DEADLINE_SECONDS,
            f"{deadline} s is shorter than {UPSTREAM_TIMEOUT_SECONDS}={timeout} s; "
            "set a deadline at least as long as one attempt.",
        )
    return UpstreamPolicy(timeout, retries, deadline)


def _number(
    environ: Mapping[str, str],
    variable: str,
    default: float,
    minimum: float,
    maximum: float,
    *,
    integer: bool = False,
) -> float:
    raw = environ.get(variable, "").strip()
    if not raw:
        return default
    kind = "a whole number" if integer else "a number"
    try:
        if not re.fullmatch(r"[0-9]+" if integer else r"[0-9]+(\.[0-9]+)?", raw):
            raise ValueError(raw)
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise ConfigurationError(
            variable,
            f"invalid value {raw!r}: set {kind} from {minimum:g} to {maximum:g}.",
        ) from None
    if not minimum <= value <= maximum:
        raise ConfigurationError(
            variable,
            f"{raw} is out of range: set {kind} from {minimum:g} to {maximum:g}.",
        )
    return value


def _boolean(environ: Mapping[str, str], variable: str) -> bool:
    raw = environ.get(variable, "").strip().lower()
    if raw in _TRUE_VALUES:
        return True
    if raw in _FALSE_VALUES:
        return False
    raise ConfigurationError(variable, f"invalid value {raw!r}: set true or false.")
