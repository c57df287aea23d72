"""Certificate headers from a client that misbehaves never become an identity.

Property-based tests feed ``parse_certificate_headers`` arbitrary, huge,
repeated and almost-valid values for every mTLS header, and check that only
well-formed values reach the identity fields. Tests through gunicorn show
what repeated and malformed identity headers become on the wire: gunicorn
joins repeated fields with a comma and drops names that contain an
underscore, before the function reads them.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import re
import string
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from shared import lb_headers
from shared.client_cert import (
    ClientCertificate,
    apply_leaf,
    authenticate_client,
    certificate_labels,
    client_id_of,
    parse_certificate_headers,
)
from shared.config import HeaderNames, load_settings
from shared.errors import InvalidClientError
from tests.conftest import (
    CLIENT_DNS_SANS,
    POOL_ID,
    PROJECT_NUMBER,
    PROVIDER_ID,
    XLB_MTLS_FLOW,
    ClientCertificateFacts,
    b64,
    lb_fingerprint,
)
from tests.hardening.conftest import (
    HeaderList,
    RawResponse,
    ServerFactory,
    decoded_sans,
    form_headers,
    leaf_der,
    raw_request,
)

HEADER_EXAMPLES = 3000
ROUND_TRIP_EXAMPLES = 500
GRANT = b"grant_type=client_credentials"

CLIENT_ID_KEYS = tuple(header.key for header in lb_headers.CLIENT_ID_CANDIDATES)
DEFAULT_NAMES = lb_headers.header_names()
# Every header is configured: the ten with defaults and the four opt-in ones.
HEADER_NAMES = {**DEFAULT_NAMES, **lb_headers.SUGGESTED_OPTIONAL_NAMES}
KEYS = tuple(HEADER_NAMES)

# What gunicorn can hand over: bytes decoded as Latin-1, without CR or LF.
# NUL and other control characters are kept, because in-process callers and
# other servers may pass them on.
LATIN1 = st.characters(min_codepoint=0, max_codepoint=255, exclude_characters="\r\n")
# Characters of a SAN that the load balancer would encode: printable ASCII
# without the comma that separates list entries.
SAN_ALPHABET = "".join(ch for ch in string.printable[:94] if ch != ",")
PRINTABLE = re.compile(r"[\x20-\x7e]*")
SAN_CHARS = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
HEX_BYTES = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*")

FUZZ_SETTINGS = settings(
    max_examples=HEADER_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@functools.cache
def names_for(client_id_key: str) -> HeaderNames:
    """Return the default header names, with the client id in ``client_id_key``."""
    environ = {
        "AUTH_FLOWS": XLB_MTLS_FLOW,
        "WORKLOAD_IDENITY_PROJECT_NUMBER": PROJECT_NUMBER,
        "WORKLOAD_IDENITY_POOL_ID": POOL_ID,
        "WORKLOAD_IDENITY_PROVIDER_ID": PROVIDER_ID,
        lb_headers.CLIENT_ID_SETTING: DEFAULT_NAMES[client_id_key],
        **{
            header.setting: HEADER_NAMES[header.key]
            for header in lb_headers.OPTIONAL_HEADERS
        },
    }
    return load_settings(environ).headers


def _leaf_certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz-leaf")])
    now = datetime.datetime.now(datetime.UTC)
    sans = [
        x509.UniformResourceIdentifier("spiffe://example.org/fuzz-leaf"),
        x509.DNSName("fuzz-leaf.example.com"),
    ]
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )


def byte_sequence(der: bytes) -> str:
    """Encode DER as an RFC 9440 byte sequence, ``:base64:``."""
    return ":" + base64.b64encode(der).decode() + ":"


# A leaf certificate for the opt-in headers, in the load balancer's formats,
# and another client's certificate to send in its place.
LEAF = _leaf_certificate()
LEAF_DER = LEAF.public_bytes(serialization.Encoding.DER)
LEAF_SEQUENCE = byte_sequence(LEAF_DER)
OTHER_LEAF_SEQUENCE = byte_sequence(
    _leaf_certificate().public_bytes(serialization.Encoding.DER)
)
LEAF_FINGERPRINT = lb_fingerprint(LEAF)
LEAF_SUBJECT = base64.b64encode(LEAF.subject.public_bytes()).decode()


# --- Strategies ------------------------------------------------------------


def _fingerprints() -> st.SearchStrategy[str]:
    digests = st.binary(min_size=32, max_size=32)
    return digests.map(lambda raw: base64.b64encode(raw).decode().rstrip("="))


def _header_fingerprints() -> st.SearchStrategy[str]:
    # The leaf's own fingerprint too, so that a leaf header can match.
    return st.one_of(_fingerprints(), st.just(LEAF_FINGERPRINT))


def _serials() -> st.SearchStrategy[str]:
    serial_bytes = st.binary(min_size=1, max_size=20)
    return serial_bytes.map(lambda raw: ":".join(f"{byte:02x}" for byte in raw))


def _san_lists() -> st.SearchStrategy[list[str]]:
    san = st.text(alphabet=SAN_ALPHABET, min_size=1, max_size=40)
    return st.lists(san, min_size=1, max_size=3)


def _san_header(sans: list[str], per_entry: bool) -> str:
    if per_entry:
        return ",".join(b64(san) for san in sans)
    return b64(",".join(sans))


def _san_headers() -> st.SearchStrategy[str]:
    return st.builds(_san_header, _san_lists(), st.booleans())


def _timestamps() -> st.SearchStrategy[str]:
    moments = st.datetimes(
        min_value=datetime.datetime(1970, 1, 1),
        max_value=datetime.datetime(2200, 1, 1),
        timezones=st.just(datetime.UTC),
    )
    return st.builds(
        lambda moment, zulu: (
            moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")
            if zulu
            else moment.replace(microsecond=0).isoformat()
        ),
        moments,
        st.booleans(),
    )


VALID_VALUES: dict[str, st.SearchStrategy[str]] = {
    "present": st.sampled_from(["true", "TRUE", " True ", "false"]),
    "chain_verified": st.sampled_from(["true", "TRUE", " True ", "false"]),
    "error": st.sampled_from(["", "client_cert_chain_invalid_eku"]),
    "sha256_fingerprint": _header_fingerprints(),
    "serial_number": _serials(),
    "spiffe_id": st.text(alphabet=SAN_ALPHABET, min_size=1, max_size=60).map(
        lambda path: "spiffe://" + path
    ),
    "uri_sans": _san_headers(),
    "dnsname_sans": _san_headers(),
    "valid_not_before": _timestamps(),
    "valid_not_after": _timestamps(),
    "subject_dn": st.just(LEAF_SUBJECT),
    "issuer_dn": st.just(LEAF_SUBJECT),
    "leaf": st.sampled_from(
        [LEAF_SEQUENCE, LEAF_SEQUENCE.replace("=", ""), OTHER_LEAF_SEQUENCE]
    ),
    "chain": st.sampled_from([LEAF_SEQUENCE, f"{LEAF_SEQUENCE}, {LEAF_SEQUENCE}"]),
}

SPECIAL_VALUES = (
    "",
    " ",
    "\x00",
    "true\x00",
    "tr\u00fce",
    "\u00ff" * 64,
    "a" * 70_000,
    "!!!not-base64!!!",
    "====",
    "YQ===",
    "2024-02-30T00:00:00+00:00",
    "2024-01-01T00:00:00",
    "9999-12-31T23:59:60+00:00",
    "spiffe://",
    "spiffe://a,spiffe://b",
    ",",
    "true,true",
)


def _mutated(value: str, position: int, replacement: str, action: int) -> str:
    """Delete, replace or insert one character of ``value``."""
    index = position % (len(value) + 1)
    if action == 0:
        return value[:index] + value[index + 1 :]
    if action == 1:
        return value[:index] + replacement + value[index + 1 :]
    return value[:index] + replacement + value[index:]


def header_values(key: str) -> st.SearchStrategy[str]:
    """Valid, almost valid, repeated and arbitrary values for one header."""
    valid = VALID_VALUES[key]
    edited = st.builds(
        _mutated,
        valid,
        st.integers(min_value=0),
        st.text(LATIN1, min_size=1, max_size=2),
        st.integers(min_value=0, max_value=2),
    )
    return st.one_of(
        valid,
        valid.map(lambda value: f"\t {value} "),
        edited,
        # gunicorn joins a repeated field with ",", werkzeug's client with ", ".
        st.lists(valid, min_size=2, max_size=3).flatmap(
            lambda values: st.sampled_from([",".join(values), ", ".join(values)])
        ),
        st.text(LATIN1, max_size=80),
        st.sampled_from(SPECIAL_VALUES),
    )


# A value, or None for an absent header, for every certificate fact. Built
# once: building strategies per example costs more than the test itself.
HEADER_SETS: st.SearchStrategy[dict[str, str | None]] = st.fixed_dictionaries(
    {key: st.one_of(st.none(), header_values(key)) for key in KEYS}
)


def as_headers(raw: Mapping[str, str | None], draw_case: bool) -> Headers:
    """Build request headers, with the names in another case if asked."""
    headers = Headers()
    for key, value in raw.items():
        if value is None:
            continue
        name = HEADER_NAMES[key]
        headers.add(name.swapcase() if draw_case else name, value)
    return headers


# --- Oracles ---------------------------------------------------------------


def _stripped(raw: Mapping[str, str | None], key: str) -> str:
    return (raw.get(key) or "").strip()


def check_fingerprint(raw: Mapping[str, str | None], cert: ClientCertificate) -> None:
    fingerprint = cert.sha256_fingerprint
    if not fingerprint:
        return
    assert fingerprint == _stripped(raw, "sha256_fingerprint").rstrip("=")
    assert len(fingerprint) == 43
    digest = base64.b64decode(fingerprint + "=", validate=True)
    assert len(digest) == 32
    # Canonical: the value is the one encoding of its digest.
    assert base64.b64encode(digest).decode().rstrip("=") == fingerprint


def check_identity_fields(
    raw: Mapping[str, str | None], cert: ClientCertificate
) -> None:
    check_fingerprint(raw, cert)
    if cert.serial_number:
        assert cert.serial_number == _stripped(raw, "serial_number")
        assert HEX_BYTES.fullmatch(cert.serial_number)
        assert len(cert.serial_number.split(":")) <= 50
    if cert.spiffe_id:
        assert cert.spiffe_id == _stripped(raw, "spiffe_id")
        assert cert.spiffe_id.startswith("spiffe://")
        assert SAN_CHARS.fullmatch(cert.spiffe_id)
        assert len(cert.spiffe_id) <= 2048
    for key, sans in (("uri_sans", cert.uri_sans), ("dnsname_sans", cert.dns_sans)):
        if not sans:
            continue
        assert sans == decoded_sans(_stripped(raw, key))
        for san in sans:
            assert SAN_CHARS.fullmatch(san)
            assert len(san) <= 2048


def check_dates(raw: Mapping[str, str | None], cert: ClientCertificate) -> None:
    for key, moment in (
        ("valid_not_before", cert.not_before),
        ("valid_not_after", cert.not_after),
    ):
        if moment is None:
            continue
        assert moment.utcoffset() is not None
        text = _stripped(raw, key).upper().replace("Z", "+00:00")
        assert moment == datetime.datetime.fromisoformat(text)


def check_flags(raw: Mapping[str, str | None], cert: ClientCertificate) -> None:
    for key, flag in (
        ("present", cert.present),
        ("chain_verified", cert.chain_verified),
    ):
        value = raw.get(key)
        assert flag == (value is not None and value.strip().lower() == "true")
    missing = {DEFAULT_NAMES[key] for key in ("present", "chain_verified")}
    assert set(cert.missing_headers) == {
        name for name in missing if raw.get(_key_of(name)) is None
    }
    assert PRINTABLE.fullmatch(cert.error)
    assert len(cert.error) <= 512


def _key_of(name: str) -> str:
    return next(key for key, value in HEADER_NAMES.items() if value == name)


def check_problems(raw: Mapping[str, str | None], cert: ClientCertificate) -> None:
    for name in cert.problems:
        key = _key_of(name)
        assert _stripped(raw, key), name
        assert not _field(cert, key), name


def _field(cert: ClientCertificate, key: str) -> Any:
    attribute = {"uri_sans": "uri_sans", "dnsname_sans": "dns_sans"}.get(key, key)
    attribute = {
        "valid_not_before": "not_before",
        "valid_not_after": "not_after",
        "subject_dn": "subject",
        "issuer_dn": "issuer",
    }.get(attribute, attribute)
    return getattr(cert, attribute)


def check_leaf(raw: Mapping[str, str | None], cert: ClientCertificate) -> None:
    sent = _stripped(raw, "leaf")
    if cert.leaf is not None:
        assert cert.leaf.public_bytes(serialization.Encoding.DER) == leaf_der(sent)
    assert cert.leaf_invalid == (bool(sent) and cert.leaf is None)
    sent_chain = _stripped(raw, "chain").split(",")
    parts = {leaf_der(part) for part in sent_chain}
    for certificate in cert.chain:
        assert certificate.public_bytes(serialization.Encoding.DER) in parts


def check_authentication(cert: ClientCertificate, names: HeaderNames) -> None:
    now = datetime.datetime.now(datetime.UTC)
    try:
        resolved = apply_leaf(cert, names, None, now)
        client_id = authenticate_client(resolved, names)
    except InvalidClientError as error:
        assert error.status_code == 401
        return
    assert resolved.verified
    assert not resolved.missing_headers
    assert client_id
    assert client_id == client_id_of(resolved, names)
    if cert.leaf is not None:
        # Facts come from a leaf only when it is the certificate whose
        # fingerprint the front end reported.
        assert cert.sha256_fingerprint == LEAF_FINGERPRINT
        assert resolved.sha256_fingerprint == LEAF_FINGERPRINT
        assert resolved.spiffe_id == "spiffe://example.org/fuzz-leaf"


def check_labels(cert: ClientCertificate) -> None:
    for name, value in certificate_labels(cert).items():
        assert isinstance(value, str), name
        # One log line per entry: no control characters from headers.
        assert PRINTABLE.fullmatch(value), name


# --- Properties ------------------------------------------------------------


# Edited chain certificates can carry a serial number of zero or below, which
# cryptography 50 loads with a deprecation warning.
@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@FUZZ_SETTINGS
@given(
    raw=HEADER_SETS,
    client_id_key=st.sampled_from(CLIENT_ID_KEYS),
    swap_case=st.booleans(),
)
def test_parse_headers_only_trusts_well_formed(
    raw: dict[str, str | None], client_id_key: str, swap_case: bool
) -> None:
    names = names_for(client_id_key)
    cert = parse_certificate_headers(as_headers(raw, swap_case), names)

    check_flags(raw, cert)
    check_identity_fields(raw, cert)
    check_dates(raw, cert)
    check_problems(raw, cert)
    check_leaf(raw, cert)
    check_authentication(cert, names)
    check_labels(cert)


@settings(max_examples=ROUND_TRIP_EXAMPLES, deadline=None, database=None)
@given(
    fingerprint=_fingerprints(),
    serial=_serials(),
    dns_sans=_san_lists(),
    uri_sans=_san_lists(),
    per_entry=st.booleans(),
    not_before=_timestamps(),
)
def test_parse_headers_round_trip_valid(
    fingerprint: str,
    serial: str,
    dns_sans: list[str],
    uri_sans: list[str],
    per_entry: bool,
    not_before: str,
) -> None:
    headers = {
        "X-Client-Cert-Present": "true",
        "X-Client-Cert-Chain-Verified": "true",
        "X-Client-Cert-Hash": fingerprint,
        "X-Client-Cert-Serial-Number": serial,
        "X-Client-Cert-DNSName-SANs": _san_header(dns_sans, per_entry),
        "X-Client-Cert-URI-SANs": _san_header(uri_sans, per_entry),
        "X-Client-Cert-Valid-Not-Before": not_before,
    }
    cert = parse_certificate_headers(headers, names_for("sha256_fingerprint"))

    assert cert.problems == ()
    assert cert.sha256_fingerprint == fingerprint
    assert cert.serial_number == serial
    assert cert.dns_sans == tuple(dns_sans)
    assert cert.uri_sans == tuple(uri_sans)
    assert cert.not_before is not None
    assert authenticate_client(cert, names_for("dnsname_sans")) == dns_sans[0]


def _byte_edits(der: bytes) -> list[bytes]:
    """Return ``der`` with each byte in turn changed in three ways."""
    edits = []
    for index in range(len(der)):
        for delta in (1, 0x80, 0xFF):
            edited = bytearray(der)
            edited[index] = (edited[index] + delta) % 256
            edits.append(bytes(edited))
    return edits


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("fingerprint_of", ["presented", "edited"])
def test_leaf_byte_edits_rejected(fingerprint_of: str) -> None:
    # "presented": the fingerprint header names the real certificate, so
    # every edited leaf must be rejected as a mismatch. "edited": a client
    # that bypassed the front end sets both headers, and the service must
    # reject or describe the leaf, never fail.
    names = names_for("spiffe_id")
    now = datetime.datetime.now(datetime.UTC)
    failures = []
    for der in _byte_edits(LEAF_DER):
        digest = hashlib.sha256(der).digest()
        edited = base64.b64encode(digest).decode().rstrip("=")
        headers = {
            "X-Client-Cert-Present": "true",
            "X-Client-Cert-Chain-Verified": "true",
            "X-Client-Cert-Hash": LEAF_FINGERPRINT
            if fingerprint_of == "presented"
            else edited,
            HEADER_NAMES["leaf"]: byte_sequence(der),
        }
        try:
            cert = parse_certificate_headers(headers, names)
            apply_leaf(cert, names, None, now)
        except InvalidClientError:
            continue
        except Exception as error:  # noqa: BLE001 - every other type fails
            failures.append(type(error).__name__)
            continue
        assert fingerprint_of == "edited", "an edited leaf matched the original"
    assert failures == []


# --- Through gunicorn: repeated and malformed identity headers -------------


def post_with(
    port: int, mtls_headers: Mapping[str, str], replaced: str, values: HeaderList
) -> RawResponse:
    """POST a token request whose header ``replaced`` is sent as ``values``."""
    others = [(name, value) for name, value in mtls_headers.items() if name != replaced]
    headers = form_headers(port, GRANT, [*others, *values])
    return raw_request(port, "POST", "/token", headers, GRANT)


def assert_invalid_client(response: RawResponse) -> None:
    assert response.status == 401, response.body[:300]
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["error"] == "invalid_client"
    assert "id_token" not in body


OTHER_FINGERPRINT = "G+SrKkjfs6Kom73j7sp+hY6/5kZ+UjPdBDEyiaOUk08"


@pytest.mark.parametrize(
    ("client_id_header", "header", "copies"),
    [
        # The fingerprint twice, as a client that adds its own copy sends it.
        ("X-Client-Cert-Hash", "X-Client-Cert-Hash", ("{fp}", "{fp}")),
        ("X-Client-Cert-Hash", "X-Client-Cert-Hash", ("{fp}", OTHER_FINGERPRINT)),
        ("X-Client-Cert-Hash", "X-Client-Cert-Hash", (OTHER_FINGERPRINT, "{fp}")),
        ("X-Client-Cert-Spiffe", "X-Client-Cert-Spiffe", ("{spiffe}", "{spiffe}")),
        ("X-Client-Cert-Hash", "X-Client-Cert-Present", ("true", "true")),
        ("X-Client-Cert-Hash", "X-Client-Cert-Chain-Verified", ("true", "true")),
    ],
)
def test_repeated_identity_header_not_client_id(
    token_server_factory: ServerFactory,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
    client_id_header: str,
    header: str,
    copies: tuple[str, str],
) -> None:
    server = token_server_factory(client_id_header)
    spiffe = mtls_headers["X-Client-Cert-Spiffe"]
    values = [
        (header, copy.format(fp=client_certificate.fingerprint, spiffe=spiffe))
        for copy in copies
    ]
    response = post_with(server.port, mtls_headers, header, values)
    assert_invalid_client(response)


def test_repeated_header_names_differing_in_case_joined(
    token_server_factory: ServerFactory,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    server = token_server_factory("X-Client-Cert-Hash")
    fingerprint = client_certificate.fingerprint
    values = [("X-Client-Cert-Hash", fingerprint), ("x-client-cert-hash", fingerprint)]
    response = post_with(server.port, mtls_headers, "X-Client-Cert-Hash", values)
    assert_invalid_client(response)


def test_repeated_san_header_not_client_id(
    token_server_factory: ServerFactory, mtls_headers: dict[str, str]
) -> None:
    server = token_server_factory("X-Client-Cert-DNSName-SANs")
    header = "X-Client-Cert-DNSName-SANs"
    forged = b64("forged.example.com")
    values = [(header, forged), (header, b64(CLIENT_DNS_SANS[0]))]
    response = post_with(server.port, mtls_headers, header, values)
    assert_invalid_client(response)


def _swap_last(value: str) -> str:
    # "o" encodes low bits 00, "p" does not: the last character of a 43-char
    # SHA-256 value must leave its two low bits zero.
    return value[:-1] + ("p" if value[-1] != "p" else "q")


MALFORMED_FINGERPRINTS: dict[str, Callable[[str], str]] = {
    "42 characters": lambda fp: fp[:-1],
    "44 characters": lambda fp: fp + "A",
    "two padding characters": lambda fp: fp + "==",
    "base64url alphabet": lambda fp: fp.replace("+", "-").replace("/", "_") + "-",
    "non-canonical last character": _swap_last,
    "inner space": lambda fp: fp[:20] + " " + fp[21:],
    "two values": lambda fp: fp + "," + fp,
}


@pytest.mark.parametrize("case", sorted(MALFORMED_FINGERPRINTS))
def test_malformed_fingerprint_not_client_id(
    token_server_factory: ServerFactory,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
    case: str,
) -> None:
    server = token_server_factory("X-Client-Cert-Hash")
    value = MALFORMED_FINGERPRINTS[case](client_certificate.fingerprint)
    header = "X-Client-Cert-Hash"
    response = post_with(server.port, mtls_headers, header, [(header, value)])
    assert_invalid_client(response)


def test_non_ascii_fingerprint_not_client_id(
    token_server_factory: ServerFactory,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    server = token_server_factory("X-Client-Cert-Hash")
    value = client_certificate.fingerprint[:-1].encode() + b"\xe9"
    header = "X-Client-Cert-Hash"
    response = post_with(server.port, mtls_headers, header, [(header, value)])
    assert_invalid_client(response)


@pytest.mark.parametrize("byte", [b"\x00", b"\x01", b"\x7f"])
def test_control_byte_in_identity_rejected_by_gunicorn(
    token_server_factory: ServerFactory,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
    byte: bytes,
) -> None:
    server = token_server_factory("X-Client-Cert-Hash")
    value = client_certificate.fingerprint.encode() + byte
    header = "X-Client-Cert-Hash"
    response = post_with(server.port, mtls_headers, header, [(header, value)])
    assert response.status == 400
    assert response.headers["Content-Type"] == "text/html"
    assert b"id_token" not in response.body


@pytest.mark.parametrize(
    "value",
    [
        "example.org/client-1",  # no scheme
        "spiffe://example.org/client 1",  # inner space
        "spiffe://example.org/a,spiffe://example.org/b",  # two IDs
        "spiffe://" + "a" * 2040,  # over the load balancer's 2048 bytes
    ],
)
def test_malformed_spiffe_not_client_id(
    token_server_factory: ServerFactory, mtls_headers: dict[str, str], value: str
) -> None:
    server = token_server_factory("X-Client-Cert-Spiffe")
    header = "X-Client-Cert-Spiffe"
    response = post_with(server.port, mtls_headers, header, [(header, value)])
    assert_invalid_client(response)


def test_underscore_header_names_dropped(
    token_server_factory: ServerFactory,
    mtls_headers: dict[str, str],
    client_certificate: ClientCertificateFacts,
) -> None:
    # gunicorn drops X_Client_Cert_Hash instead of mapping it onto the
    # environ key of X-Client-Cert-Hash, so it cannot stand in for it.
    server = token_server_factory("X-Client-Cert-Hash")
    values = [("X_Client_Cert_Hash", client_certificate.fingerprint)]
    response = post_with(server.port, mtls_headers, "X-Client-Cert-Hash", values)
    assert_invalid_client(response)


def test_underscore_flag_cannot_override_false(
    token_server_factory: ServerFactory, mtls_headers: dict[str, str]
) -> None:
    server = token_server_factory("X-Client-Cert-Hash")
    header = "X-Client-Cert-Chain-Verified"
    values = [(header, "false"), ("X_Client_Cert_Chain_Verified", "true")]
    response = post_with(server.port, mtls_headers, header, values)
    assert_invalid_client(response)
