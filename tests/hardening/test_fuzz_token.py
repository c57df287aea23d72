"""The token function under requests from clients that misbehave.

Property-based requests fuzz every mTLS header, the form body, the content
type, the method and the path. They check the function's promises: no 5xx,
and JSON with ``Cache-Control: no-store`` in the format the client requested.
A token is issued only for a verified certificate, and it names the client
that the headers name. STS and IAM Credentials are a stub on loopback that always
succeeds, so any 5xx is the function's own. Then every rejection path is
checked for its one log entry, and the log hygiene plugin for the leaks it
must catch.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import os
import string
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from shared import lb_headers
from shared.structured_log import configure_logging
from shared.token_request import MAX_BODY_BYTES
from tests import log_hygiene
from tests.conftest import (
    CLIENT_SPIFFE_ID,
    FORM_CONTENT_TYPE,
    ISSUER,
    REPO_ROOT,
    TOKEN_AUDIENCE,
    AppFactory,
    ClientCertificateFacts,
    b64,
    labels_of,
    lb_fingerprint,
    log_entries,
)
from tests.hardening.conftest import (
    STUB_IAM_TOKEN,
    STUB_STS_TOKEN,
    StubUpstream,
    decoded_sans,
    leaf_der,
)

FUNCTION_EXAMPLES = 300
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
WORKLOAD_ACCOUNT = "workload@demo-project.iam.gserviceaccount.com"
GRANT = "grant_type=client_credentials"
# "/" is the token path as a URL-mask load balancer may pass it on.
TOKEN_PATHS = ("/token", "/")

CLIENT_ID_HEADERS = tuple(
    header.default_name for header in lb_headers.CLIENT_ID_CANDIDATES
)
PRESENT = lb_headers.PRESENT.default_name
CHAIN_VERIFIED = lb_headers.CHAIN_VERIFIED.default_name
FINGERPRINT = lb_headers.SHA256_FINGERPRINT.default_name
SPIFFE = lb_headers.SPIFFE_ID.default_name
DNS_SANS = lb_headers.DNSNAME_SANS.default_name
URI_SANS = lb_headers.URI_SANS.default_name
# Opt-in headers, read only by the configuration that names them.
OPTIONAL_NAMES = lb_headers.SUGGESTED_OPTIONAL_NAMES
LEAF = OPTIONAL_NAMES[lb_headers.LEAF.key]
SECRET_HEADER = "X-Token-Service-Secret"
LB_SECRET_VALUE = "fuzz-lb-secret-0123456789abcdef"  # noqa: S105 - test value
DECISIVE_HEADERS = (
    PRESENT,
    CHAIN_VERIFIED,
    FINGERPRINT,
    SPIFFE,
    DNS_SANS,
    URI_SANS,
    LEAF,
    SECRET_HEADER,
)
# The configurations under test: one per client id header, and one that also
# reads the leaf certificate and requires the load balancer's secret.
LEAF_CONFIG = "leaf header and LB secret"
CONFIGS = (*CLIENT_ID_HEADERS, LEAF_CONFIG)

OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "invalid_scope",
        "unauthorized_client",
        "unsupported_grant_type",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
    }
)
METHODS = ("POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "PROPFIND")
PATHS = (
    "/token",
    "/token/",
    "/TOKEN",
    "/",
    "/robots.txt",
    "/favicon.ico",
    "/.well-known/openid-configuration",
    "/token?grant_type=client_credentials",
    "/token/../token",
)
# Path characters that werkzeug's test client sends as they are: no "%",
# which would decode into another path, and no "?" or "#". A path must not
# start with "//", which the test client reads as a host name.
PATH_ALPHABET = string.ascii_letters + string.digits + "-._~/!$&'()*+,;=:@"
CONTENT_TYPES = (
    FORM_CONTENT_TYPE,
    FORM_CONTENT_TYPE + "; charset=UTF-8",
    FORM_CONTENT_TYPE + "; charset=latin-1",
    FORM_CONTENT_TYPE.upper(),
    "application/json",
    "multipart/form-data; boundary=x",
    "text/plain",
    "",
)
LATIN1 = st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n")
SPECIAL_VALUES = (
    "",
    "\x00",
    "true\x00",
    "tr\u00fce",
    "!!!not-base64!!!",
    "2024-02-30T00:00:00+00:00",
    "not a date",
    "spiffe://a,spiffe://b",
    "a" * 20_000,
)

FUZZ_SETTINGS = settings(
    max_examples=FUNCTION_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class FuzzRequest:
    """One request of the fuzzer, and the configuration it goes to."""

    config: str
    method: str
    path: str
    headers: Sequence[tuple[str, str]]
    body: bytes
    content_type: str | None


# --- Strategies ------------------------------------------------------------


def _mutate(value: str, position: int, replacement: str) -> str:
    index = position % (len(value) + 1)
    return value[:index] + replacement + value[index + 1 :]


def header_values(valid: str) -> st.SearchStrategy[str]:
    """The valid value, or one that is close to it, arbitrary or huge."""
    edited = st.builds(
        _mutate, st.just(valid), st.integers(min_value=0), st.text(LATIN1, max_size=2)
    )
    return st.one_of(
        st.just(valid),
        st.just(f" {valid}\t"),
        st.just(valid.upper()),
        edited,
        st.just(b64(valid) if valid.isascii() else valid),
        st.text(LATIN1, max_size=40),
        st.sampled_from(SPECIAL_VALUES),
        st.just(valid * 300),
    )


@st.composite
def header_lists(draw: st.DrawFn, valid: Mapping[str, str]) -> list[tuple[str, str]]:
    """The valid headers, some dropped, changed, repeated or renamed in case."""
    # Headers that decide whether and to whom a token is issued are drawn
    # twice as often as the others.
    names = [*sorted(valid), *(name for name in DECISIVE_HEADERS if name in valid)]
    mutated = mostly(
        draw, set(), st.sets(st.sampled_from(names), min_size=1, max_size=4), 40
    )
    headers: list[tuple[str, str]] = []
    for name, value in valid.items():
        if name not in mutated:
            headers.append((name, value))
            continue
        values = header_values(value)
        copies = draw(st.lists(values, max_size=3))
        spelling = draw(st.sampled_from([name, name.lower(), name.upper()]))
        headers.extend((spelling, copy) for copy in copies)
    noise_names = st.sampled_from(["X-Noise", "Authorization", "Host", "Forwarded"])
    noise = draw(st.lists(st.tuples(noise_names, st.text(LATIN1, max_size=20))))
    return headers + noise[:2]


_T = TypeVar("_T")


def mostly(
    draw: st.DrawFn, usual: _T, other: st.SearchStrategy[_T], percent: int
) -> _T:
    """Return ``usual`` in about ``percent`` out of 100 draws, else draw ``other``.

    Without this, a few fuzzed fields would make almost every request fail
    early, and the checks on issued tokens would rarely run.
    """
    if draw(st.integers(min_value=0, max_value=99)) < percent:
        return usual
    return draw(other)


def likely_forms(client_ids: Sequence[str]) -> st.SearchStrategy[bytes]:
    """Client-credentials forms with optional parameters, valid or not."""
    return st.fixed_dictionaries(
        {"grant_type": st.just("client_credentials")},
        optional={
            "scope": st.sampled_from([SCOPE, SCOPE + " openid", 'a"b']),
            "service_account": st.sampled_from([WORKLOAD_ACCOUNT, "nobody"]),
            "format": st.sampled_from(["external_credential", "xml"]),
            "client_id": st.sampled_from([*client_ids, "someone-else"]),
        },
    ).map(lambda form: urlencode(list(form.items())).encode())


def odd_bodies(client_ids: Sequence[str]) -> st.SearchStrategy[bytes]:
    """Parameters in any order, repeated or empty, arbitrary bytes, huge bodies."""
    parameter = st.sampled_from(
        ["grant_type", "scope", "service_account", "format", "client_id", "x"]
    )
    values = st.one_of(
        st.sampled_from(
            [
                "client_credentials",
                "password",
                "",
                SCOPE,
                "external_credential",
                WORKLOAD_ACCOUNT,
                "123456789012345678901",
                *client_ids,
            ]
        ),
        st.text(LATIN1, max_size=20),
    )
    pairs = st.lists(st.tuples(parameter, values), max_size=6)
    grant = GRANT.encode()
    sizes = st.integers(MAX_BODY_BYTES - len(grant) - 3, MAX_BODY_BYTES + 100)
    return st.one_of(
        pairs.map(lambda items: urlencode(items).encode()),
        st.binary(max_size=200),
        st.text(LATIN1, max_size=60).map(lambda text: text.encode("utf-8")),
        sizes.map(lambda size: grant + b"&x=" + b"a" * size),
    )


@st.composite
def fuzz_requests(draw: st.DrawFn, valid: Mapping[str, str]) -> FuzzRequest:
    """Draw one request around a valid mTLS token request."""
    client_ids = (valid[SPIFFE], valid[FINGERPRINT], "client-1.example.com")
    paths = st.one_of(
        st.sampled_from(PATHS),
        st.text(PATH_ALPHABET, max_size=30).map(lambda text: "/" + text.lstrip("/")),
    )
    content_types = st.one_of(
        st.sampled_from(CONTENT_TYPES), st.none(), st.text(LATIN1, max_size=40)
    )
    likely = draw(st.integers(min_value=0, max_value=99)) < 65
    body = draw(likely_forms(client_ids) if likely else odd_bodies(client_ids))
    return FuzzRequest(
        # The leaf configuration has the most checks, so it gets more draws.
        config=draw(st.sampled_from((*CONFIGS, LEAF_CONFIG, LEAF_CONFIG))),
        method=mostly(draw, "POST", st.sampled_from(METHODS), 85),
        path=mostly(draw, "/token", paths, 85),
        headers=draw(header_lists(valid)),
        body=body,
        content_type=mostly(draw, FORM_CONTENT_TYPE, content_types, 85),
    )


# --- Oracles ---------------------------------------------------------------


def joined(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    """Return the header as the function reads it: copies joined by ", "."""
    values = [value for key, value in headers if key.lower() == name.lower()]
    return ", ".join(values) if values else None


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() == "true"


def uses_leaf(request: FuzzRequest) -> bool:
    """Whether the facts come from the leaf header instead of the others."""
    leaf = joined(request.headers, LEAF) or ""
    return request.config == LEAF_CONFIG and bool(leaf.strip())


def expected_client_id(request: FuzzRequest) -> str:
    """Return the client id that the request's headers name, per configuration."""
    if uses_leaf(request):
        # The leaf is the fixture's certificate, whose SPIFFE ID names it.
        return CLIENT_SPIFFE_ID
    header = SPIFFE if request.config == LEAF_CONFIG else request.config
    raw = (joined(request.headers, header) or "").strip()
    if header == FINGERPRINT:
        return raw.rstrip("=")
    if header in (DNS_SANS, URI_SANS):
        return decoded_sans(raw)[0]
    return raw


def asks_external_format(request: FuzzRequest) -> bool:
    """Whether the function must respond in the executable format."""
    if request.method != "POST" or request.path.split("?")[0] not in TOKEN_PATHS:
        return False
    if len(request.body) > MAX_BODY_BYTES:
        return False
    text = request.body.decode("utf-8", errors="replace")
    pairs = parse_qsl(text, keep_blank_values=True, errors="replace")
    return ("format", "external_credential") in pairs


def check_response(
    request: FuzzRequest, response: TestResponse, public_key: Any
) -> None:
    """Check every promise the function makes about one response."""
    status = response.status_code
    assert status < 500, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    if request.method == "HEAD":
        return
    body = json.loads(response.get_data())
    assert isinstance(body, dict)
    if status == 200:
        check_issued(request, body, public_key)
    elif "success" in body:
        assert asks_external_format(request)
        assert body["success"] is False
        assert body["version"] == 1
        assert body["code"] in OAUTH_ERRORS
        assert set(body) == {"version", "success", "code", "message"}
    else:
        assert not asks_external_format(request)
        assert body["error"] in OAUTH_ERRORS
        assert set(body) <= {"error", "error_description"}


def check_issued(request: FuzzRequest, body: dict[str, Any], public_key: Any) -> None:
    """A token only for a verified certificate, naming the headers' client."""
    assert request.method == "POST"
    assert request.path.split("?")[0] in TOKEN_PATHS
    assert is_true(joined(request.headers, PRESENT))
    assert is_true(joined(request.headers, CHAIN_VERIFIED))
    if request.config == LEAF_CONFIG:
        secret = joined(request.headers, SECRET_HEADER) or ""
        assert secret.strip() == LB_SECRET_VALUE

    claims = jwt.decode(
        body["id_token"],
        public_key,
        algorithms=["RS256"],
        audience=TOKEN_AUDIENCE,
        issuer=ISSUER,
    )
    assert claims["client_id"]
    assert claims["sub"] == claims["client_id"]
    assert claims["client_id"] == expected_client_id(request)

    client = claims["client"]
    fingerprint = (joined(request.headers, FINGERPRINT) or "").strip().rstrip("=")
    assert client["x5_sha256"] in ("", fingerprint)
    if uses_leaf(request):
        assert client["x5_sha256"] == fingerprint
        assert client["x5_spiffe"] == CLIENT_SPIFFE_ID
    else:
        spiffe = (joined(request.headers, SPIFFE) or "").strip()
        assert client["x5_spiffe"] in ("", spiffe)
    if asks_external_format(request):
        assert body["success"] is True
        return
    if "access_token" in body:
        form = dict(parse_qsl(request.body.decode()))
        stub = STUB_IAM_TOKEN if form.get("service_account") else STUB_STS_TOKEN
        assert body["access_token"] == stub


# --- Properties ------------------------------------------------------------


@pytest.fixture()
def fuzz_clients(
    make_client: AppFactory,
    service_env: dict[str, str],
    stub_upstream: StubUpstream,
) -> dict[str, FlaskClient]:
    """One token function per configuration, with the stub as upstream."""
    common = {
        **service_env,
        "STS_ENDPOINT": stub_upstream.sts_endpoint,
        "IAM_CREDENTIALS_ENDPOINT": stub_upstream.base_url,
        "UPSTREAM_MAX_RETRIES": "0",
    }
    clients = {
        name: make_client("token", {**common, lb_headers.CLIENT_ID_SETTING: name})
        for name in CLIENT_ID_HEADERS
    }
    leaf_env = {
        **common,
        lb_headers.CLIENT_ID_SETTING: SPIFFE,
        **{
            header.setting: OPTIONAL_NAMES[header.key]
            for header in lb_headers.OPTIONAL_HEADERS
        },
        "LB_SECRET_HEADER": SECRET_HEADER,
        "LB_SECRET": LB_SECRET_VALUE,
    }
    clients[LEAF_CONFIG] = make_client("token", leaf_env)
    return clients


@pytest.fixture()
def public_key(service_env: dict[str, str]) -> Any:
    """The public key that verifies the function's tokens."""
    pem = Path(service_env["SIGNING_KEY_FILE"]).read_bytes()
    return serialization.load_pem_private_key(pem, password=None).public_key()


def valid_headers(
    mtls: Mapping[str, str], facts: ClientCertificateFacts
) -> dict[str, str]:
    """Return the headers of a request that every configuration accepts.

    The DNS and URI SAN headers hold one SAN each, so each can name the
    client. The opt-in headers carry the certificate in the load balancer's
    formats, and configurations that do not read them ignore them.
    """
    certificate = facts.certificate
    der = certificate.public_bytes(serialization.Encoding.DER)
    sequence = ":" + base64.b64encode(der).decode() + ":"
    return {
        **mtls,
        DNS_SANS: b64("client-1.example.com"),
        URI_SANS: b64("https://client-1.example.com/id"),
        LEAF: sequence,
        OPTIONAL_NAMES[lb_headers.CHAIN.key]: sequence,
        OPTIONAL_NAMES[lb_headers.SUBJECT_DN.key]: _b64_der(certificate.subject),
        OPTIONAL_NAMES[lb_headers.ISSUER_DN.key]: _b64_der(certificate.issuer),
        SECRET_HEADER: LB_SECRET_VALUE,
    }


def _b64_der(name: x509.Name) -> str:
    return base64.b64encode(name.public_bytes()).decode()


def test_token_fuzzed_requests_keep_promises(
    fuzz_clients: dict[str, FlaskClient],
    public_key: Any,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    strategy = fuzz_requests(valid_headers(mtls_headers, client_certificate))

    @FUZZ_SETTINGS
    @given(request=strategy)
    def run(request: FuzzRequest) -> None:
        headers = list(request.headers)
        if request.content_type is not None:
            headers.append(("Content-Type", request.content_type))
        response = fuzz_clients[request.config].open(
            request.path, method=request.method, data=request.body, headers=headers
        )
        check_response(request, response, public_key)

    run()


def test_fuzzed_unmodified_request_issues(
    fuzz_clients: dict[str, FlaskClient],
    public_key: Any,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    # The fuzzer's starting point must issue a token in every configuration,
    # or the properties above would hold for a function that rejects
    # everything.
    headers = valid_headers(mtls_headers, client_certificate)
    for name, client in fuzz_clients.items():
        request = FuzzRequest(
            name, "POST", "/token", list(headers.items()), GRANT.encode(), None
        )
        response = client.post(
            "/token",
            data=GRANT,
            headers={**headers, "Content-Type": FORM_CONTENT_TYPE},
        )
        assert response.status_code == 200, name
        check_response(request, response, public_key)


# --- The leaf header and the load balancer secret --------------------------

FOCUSED_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
HEADER_CLAIMED_SPIFFE = "spiffe://example.org/claimed/by-header"


def post_leaf_config(
    client: FlaskClient, headers: Sequence[tuple[str, str]]
) -> TestResponse:
    return client.post(
        "/token",
        data=GRANT,
        headers=[*headers, ("Content-Type", FORM_CONTENT_TYPE)],
    )


def replaced(
    valid: Mapping[str, str], changes: Mapping[str, Sequence[str]]
) -> list[tuple[str, str]]:
    """Return ``valid`` with each changed header sent as its list of copies."""
    headers = [(name, value) for name, value in valid.items() if name not in changes]
    for name, copies in changes.items():
        headers.extend((name, copy) for copy in copies)
    return headers


def test_lb_secret_required_for_token(
    fuzz_clients: dict[str, FlaskClient],
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    valid = valid_headers(mtls_headers, client_certificate)
    copies = st.lists(header_values(LB_SECRET_VALUE), max_size=2)

    @FOCUSED_SETTINGS
    @given(secrets=copies)
    def run(secrets: list[str]) -> None:
        headers = replaced(valid, {SECRET_HEADER: secrets})
        response = post_leaf_config(fuzz_clients[LEAF_CONFIG], headers)
        sent = joined(headers, SECRET_HEADER)
        if sent is not None and sent.strip() == LB_SECRET_VALUE:
            assert response.status_code == 200
        else:
            assert response.status_code == 401
            assert response.get_json()["error"] == "invalid_client"

    run()


def test_leaf_facts_override_headers(
    fuzz_clients: dict[str, FlaskClient],
    public_key: Any,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    valid = valid_headers(mtls_headers, client_certificate)
    identity_headers = (SPIFFE, DNS_SANS, URI_SANS, "X-Client-Cert-Serial-Number")
    changes = st.fixed_dictionaries(
        {},
        optional={
            name: st.lists(header_values(valid[name]), max_size=2)
            for name in identity_headers
        },
    )

    @FOCUSED_SETTINGS
    @given(changed=changes)
    def run(changed: dict[str, list[str]]) -> None:
        headers = replaced(valid, changed)
        response = post_leaf_config(fuzz_clients[LEAF_CONFIG], headers)
        # Every fact comes from the leaf, so the other headers cannot
        # change the identity, or stop a token.
        assert response.status_code == 200, response.get_data(as_text=True)
        claims = jwt.decode(
            response.get_json()["id_token"],
            public_key,
            algorithms=["RS256"],
            audience=TOKEN_AUDIENCE,
        )
        assert claims["client_id"] == CLIENT_SPIFFE_ID
        assert claims["client"]["x5_serial"] == client_certificate.serial
        assert claims["client"]["x5_sha256"] == client_certificate.fingerprint

    run()


def test_leaf_header_must_match_certificate(
    fuzz_clients: dict[str, FlaskClient],
    public_key: Any,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    valid = valid_headers(mtls_headers, client_certificate)
    # The SPIFFE header claims another client, so the token shows which
    # source named the client.
    valid[SPIFFE] = HEADER_CLAIMED_SPIFFE
    der = client_certificate.certificate.public_bytes(serialization.Encoding.DER)
    # Another client's certificate, sent with this client's fingerprint.
    other = ":" + base64.b64encode(_certificate_der()).decode() + ":"
    leaf_values = st.one_of(header_values(valid[LEAF]), st.just(other))
    copies = st.lists(leaf_values, max_size=2)

    @FOCUSED_SETTINGS
    @given(leaves=copies)
    def run(leaves: list[str]) -> None:
        headers = replaced(valid, {LEAF: leaves})
        response = post_leaf_config(fuzz_clients[LEAF_CONFIG], headers)
        sent = joined(headers, LEAF)
        if sent is not None and sent.strip() and leaf_der(sent) != der:
            assert response.status_code == 401
            assert response.get_json()["error"] == "invalid_client"
            return
        assert response.status_code == 200, response.get_data(as_text=True)
        claims = jwt.decode(
            response.get_json()["id_token"],
            public_key,
            algorithms=["RS256"],
            audience=TOKEN_AUDIENCE,
        )
        leaf_used = sent is not None and bool(sent.strip())
        expected = CLIENT_SPIFFE_ID if leaf_used else HEADER_CLAIMED_SPIFFE
        assert claims["client_id"] == expected

    run()


def _certificate_der() -> bytes:
    """Return the DER of a new self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other-client")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def _certificate_with_malformed_san() -> x509.Certificate:
    """Return a certificate that loads, but whose SAN extension does not parse.

    Its one SAN is an iPAddress of three bytes, and cryptography parses
    extensions only when they are first read.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "malformed-san")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.UnrecognizedExtension(
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME, bytes.fromhex("30058703010203")
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )


@pytest.mark.parametrize("fingerprint_of", ["presented", "leaf"])
def test_leaf_malformed_extension_invalid_client(
    fuzz_clients: dict[str, FlaskClient],
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
    fingerprint_of: str,
) -> None:
    malformed = _certificate_with_malformed_san()
    der = malformed.public_bytes(serialization.Encoding.DER)
    headers = valid_headers(mtls_headers, client_certificate)
    headers[LEAF] = ":" + base64.b64encode(der).decode() + ":"
    if fingerprint_of == "leaf":
        headers[FINGERPRINT] = lb_fingerprint(malformed)

    response = post_leaf_config(fuzz_clients[LEAF_CONFIG], list(headers.items()))

    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.get_json()["error"] == "invalid_client"


# --- One log entry per rejection ---------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """A request that the function must reject, and what it must log."""

    error: str
    reason: str
    status: int
    body: str = GRANT
    method: str = "POST"
    path: str = "/token"
    content_type: str = FORM_CONTENT_TYPE
    header_changes: Mapping[str, str | None] = field(default_factory=dict)
    authenticated: bool = False


REJECTIONS = {
    "unsupported content type": Rejection(
        "invalid_request",
        "unsupported_content_type",
        400,
        content_type="application/json",
    ),
    "malformed body": Rejection(
        "invalid_request", "malformed_body", 400, body="grant_type=\udcff"
    ),
    "missing grant_type": Rejection(
        "invalid_request", "missing_grant_type", 400, body="scope=x"
    ),
    "repeated parameter": Rejection(
        "invalid_request", "repeated_parameter", 400, body=GRANT + "&" + GRANT
    ),
    "body too large": Rejection(
        "invalid_request",
        "body_too_large",
        400,
        body=GRANT + "&x=" + "a" * MAX_BODY_BYTES,
    ),
    "unknown format": Rejection(
        "invalid_request", "unknown_format", 400, body=GRANT + "&format=xml"
    ),
    "service account without scope": Rejection(
        "invalid_request",
        "service_account_without_scope",
        400,
        body=f"{GRANT}&service_account={WORKLOAD_ACCOUNT}",
        authenticated=True,
    ),
    "unsupported grant type": Rejection(
        "unsupported_grant_type",
        "unsupported_grant_type",
        400,
        body="grant_type=password",
    ),
    "mTLS headers missing": Rejection(
        "invalid_client",
        "mtls_headers_missing",
        401,
        header_changes={PRESENT: None, CHAIN_VERIFIED: None},
    ),
    "no certificate": Rejection(
        "invalid_client",
        "certificate_missing",
        401,
        header_changes={PRESENT: "false"},
    ),
    "chain not verified": Rejection(
        "invalid_client",
        "certificate_not_verified",
        401,
        header_changes={CHAIN_VERIFIED: "false"},
    ),
    "client id header malformed": Rejection(
        "invalid_client",
        "client_id_missing",
        401,
        header_changes={SPIFFE: "not a spiffe id"},
    ),
    "client_id parameter mismatch": Rejection(
        "invalid_client",
        "client_id_mismatch",
        401,
        body=GRANT + "&client_id=someone-else",
        authenticated=True,
    ),
    "unknown path": Rejection("invalid_request", "unknown_path", 404, path="/other"),
    "wrong method": Rejection(
        "invalid_request", "method_not_allowed", 405, method="PUT"
    ),
    "framework path": Rejection(
        "invalid_request", "framework_not_found", 404, path="/robots.txt"
    ),
}

# Rejections decided before the certificate headers are read.


def rejection_log_entries(
    client: FlaskClient,
    mtls_headers: Mapping[str, str],
    capsys: pytest.CaptureFixture[str],
    rejection: Rejection,
) -> list[dict[str, Any]]:
    """Send the rejected request, check the response, and return the log entries."""
    headers = {**mtls_headers, **rejection.header_changes}
    sent = {name: value for name, value in headers.items() if value is not None}
    sent["Content-Type"] = rejection.content_type
    capsys.readouterr()

    response = client.open(
        rejection.path,
        method=rejection.method,
        data=rejection.body.encode("utf-8", errors="surrogateescape"),
        headers=sent,
    )

    assert response.status_code == rejection.status
    assert response.get_json()["error"] == rejection.error
    return log_entries(capsys.readouterr().out)


@pytest.mark.parametrize("rejection", list(REJECTIONS.values()), ids=list(REJECTIONS))
def test_rejection_logs_one_entry(
    make_client: AppFactory,
    service_env: dict[str, str],
    mtls_headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    rejection: Rejection,
) -> None:
    client = make_client("token", service_env)
    entries = rejection_log_entries(client, mtls_headers, capsys, rejection)

    assert len(entries) == 1, entries
    labels = labels_of(entries[0])
    assert entries[0]["severity"] == "WARNING"
    assert labels["error"] == rejection.error
    assert labels["reason"] == rejection.reason


@pytest.mark.parametrize("rejection", list(REJECTIONS.values()), ids=list(REJECTIONS))
def test_rejection_log_names_client(
    make_client: AppFactory,
    service_env: dict[str, str],
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
    capsys: pytest.CaptureFixture[str],
    rejection: Rejection,
) -> None:
    client = make_client("token", service_env)
    (entry,) = rejection_log_entries(client, mtls_headers, capsys, rejection)

    labels = labels_of(entry)
    # The load balancer sends the fingerprint whenever a certificate was
    # presented, verified or not, so every rejection can name it.
    assert labels.get("x5_sha256") == client_certificate.fingerprint
    if rejection.authenticated:
        assert labels["client_id"] == CLIENT_SPIFFE_ID


# --- The log hygiene plugin ------------------------------------------------

FAKE_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJjbGllbnQifQ.c2lnbmF0dXJl"
FAKE_ACCESS_TOKEN = "ya29.sts-emulator.abcdef123"  # noqa: S105 - fake
FAKE_KEY_LINE = "-----BEGIN RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("line", "kinds"),
    [
        (f"token={FAKE_JWT}", ["JWT"]),
        (f"Bearer {FAKE_ACCESS_TOKEN}", ["access token"]),
        (FAKE_KEY_LINE, ["PEM private key"]),
        ("-----BEGIN PRIVATE KEY-----", ["PEM private key"]),
        ("-----BEGIN EC PRIVATE KEY-----", ["PEM private key"]),
        (f"{FAKE_JWT} {FAKE_ACCESS_TOKEN}", ["JWT", "access token"]),
        # Public identifiers and near misses are not leaks.
        ("x5_sha256=om8vGt3r6eTx5TI1kCeNKRJYZTUreIbHGu+Gu8FN8To", []),
        ("eyJhbGciOiJSUzI1NiJ9 alone", []),
        ("ya29 without a dot", []),
        ("-----BEGIN CERTIFICATE-----", []),
        ("-----BEGIN PUBLIC KEY-----", []),
    ],
)
def test_detector_finds_leaks(line: str, kinds: list[str]) -> None:
    assert log_hygiene.find_leaks(line) == kinds


def test_detector_reads_labels_and_tracebacks() -> None:
    recorder = log_hygiene.LeakRecorder()
    logger = logging.getLogger("tests.hardening.detector")
    in_labels = logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "issued", (), None,
        extra={"labels": {"token": FAKE_JWT}},
    )  # fmt: skip
    try:
        raise RuntimeError(FAKE_ACCESS_TOKEN)
    except RuntimeError as error:
        in_traceback = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "failed", (),
            (type(error), error, error.__traceback__),
        )  # fmt: skip
    clean = logger.makeRecord(
        logger.name, logging.INFO, __file__, 1, "client %s", ("om8v",), None
    )

    for record in (in_labels, in_traceback, clean):
        recorder.handle(record)

    assert [leak.kind for leak in recorder.leaks] == ["JWT", "access token"]


def test_detector_scans_subprocess_logs() -> None:
    # A folder outside the session's base temporary directory, so the
    # session's own scan does not see these leaks.
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "stack").mkdir()
        (root / "stack" / "token.log").write_text(f"ok\nid_token {FAKE_JWT}\n")
        (root / "function-0.out").write_text(FAKE_KEY_LINE + "\n")
        (root / "function-0.err").write_text("clean\n")
        (root / "notes.txt").write_text(FAKE_JWT + "\n")

        leaks = log_hygiene.scan_log_files(root)

    sources = sorted((Path(leak.source).name, leak.kind) for leak in leaks)
    assert sources == [("function-0.out:1", "PEM private key"), ("token.log:2", "JWT")]
    report = log_hygiene.format_report(leaks)
    assert "2 log line(s) leak a secret" in report
    assert FAKE_JWT not in report
    assert FAKE_KEY_LINE not in report


def test_session_recorder_survives_configure_logging() -> None:
    recorder = log_hygiene.session_recorder()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    before = len(recorder.leaks)
    try:
        configure_logging(None)
        logging.getLogger("tests.hardening.leak").warning("token %s", FAKE_JWT)
        leaked = recorder.leaks[before:]
    finally:
        # Undo the leak this test made on purpose, so the session passes.
        del recorder.leaks[before:]
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert [leak.kind for leak in leaked] == ["JWT"]
    assert leaked[0].test.endswith("test_session_recorder_survives_configure_logging")


_LEAKING_TESTS = f"""
import logging


def test_subprocess_log_leaks(tmp_path):
    (tmp_path / "stack.log").write_text("issued id_token {FAKE_JWT}\\n")


def test_record_leaks():
    logging.getLogger("inner").warning("key %s", "{FAKE_KEY_LINE}")
"""


def test_leaking_session_fails() -> None:
    # An inner pytest session with the plugin, whose tests leak on purpose.
    # Its files live outside this session's base temporary directory.
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "test_leaks.py").write_text(_LEAKING_TESTS)
        result = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-p",
                "tests.log_hygiene",
                # Only the plugin's report may show up, not pytest's capture.
                "--show-capture=no",
                "--basetemp",
                str(root / "basetemp"),
                str(root / "test_leaks.py"),
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert result.returncode == 1, result.stdout
    assert "2 passed, 1 error" in result.stdout
    assert "2 log line(s) leak a secret" in result.stdout
    assert "JWT in " in result.stdout
    assert "stack.log:1" in result.stdout
    assert "PEM private key in a record of logger 'inner'" in result.stdout
    assert FAKE_JWT not in result.stdout
    assert FAKE_KEY_LINE not in result.stdout


def test_known_leaks_split_and_stale(monkeypatch: pytest.MonkeyPatch) -> None:
    known_test = "tests/x.py::test_known"
    monkeypatch.setitem(log_hygiene.KNOWN_LEAKS, known_test, "x.py:f: a bug")
    leaks = [
        log_hygiene.Leak("a record", "JWT", known_test),
        log_hygiene.Leak("a record", "JWT", "tests/x.py::test_new"),
        log_hygiene.Leak("stack/token.log:3", "access token"),
    ]
    known, unexpected, stale = log_hygiene.split_known(leaks, {known_test})
    assert known == leaks[:1]
    assert unexpected == leaks[1:]
    assert stale == []
    # A listed test that ran without leaking is reported, as a strict xfail.
    assert log_hygiene.split_known([], {known_test})[2] == [known_test]
