"""Tests for shared.client_cert: what the load balancer's headers are trusted for."""

from __future__ import annotations

import datetime

import pytest
from werkzeug.datastructures import Headers

from shared import lb_headers
from shared.client_cert import (
    ClientCertificate,
    authenticate_client,
    certificate_labels,
    client_id_of,
    decode_san_header,
    parse_certificate_headers,
    parse_fingerprint,
    parse_rfc3339,
)
from shared.config import HeaderNames
from shared.errors import InvalidClientError
from tests.conftest import (
    CLIENT_DNS_SANS,
    CLIENT_SPIFFE_ID,
    CLIENT_URI_SANS,
    LB_FINGERPRINT,
    LB_SERIAL,
    b64,
)

PER_ENTRY_SANS = "Y2xpZW50LTEuZXhhbXBsZS5jb20=,Y2xpZW50LTEuaW50ZXJuYWwuZXhhbXBsZS5jb20="
WHOLE_LIST_SANS = "Y2xpZW50LTEuZXhhbXBsZS5jb20sY2xpZW50LTEuaW50ZXJuYWwuZXhhbXBsZS5jb20="
TWO_DNS_SANS = ("client-1.example.com", "client-1.internal.example.com")


def names_for(client_id_key: str = "spiffe_id") -> HeaderNames:
    """Return the default header names with the given client id header."""
    return HeaderNames(by_key=lb_headers.header_names(), client_id_key=client_id_key)


def verified(**headers: str) -> dict[str, str]:
    """Return the headers of a verified certificate plus ``headers``."""
    return {
        "X-Client-Cert-Present": "true",
        "X-Client-Cert-Chain-Verified": "true",
        **headers,
    }


def parse(headers: dict[str, str], key: str = "spiffe_id") -> ClientCertificate:
    return parse_certificate_headers(headers, names_for(key))


# --- present and chain verified --------------------------------------------


@pytest.mark.parametrize(
    ("present", "chain_verified"),
    [
        ("true", "true"),
        ("TRUE", "True"),
        (" true ", "\ttrue"),
    ],
)
def test_verified_when_both_true(present: str, chain_verified: str) -> None:
    headers = {
        "X-Client-Cert-Present": present,
        "X-Client-Cert-Chain-Verified": chain_verified,
    }
    assert parse(headers).verified


@pytest.mark.parametrize(
    ("present", "chain_verified"),
    [
        ("true", "false"),
        ("false", "true"),
        ("false", "false"),
        ("true", ""),
        ("", "true"),
        ("yes", "true"),
        ("1", "true"),
        ("true", "1"),
        ("true,true", "true"),  # a duplicated header, joined by the HTTP server
        ("true", "true, true"),
        ("tru", "true"),
        ("true\x00", "true"),
        ("trüe", "true"),
    ],
)
def test_not_verified_otherwise(present: str, chain_verified: str) -> None:
    headers = {
        "X-Client-Cert-Present": present,
        "X-Client-Cert-Chain-Verified": chain_verified,
    }
    assert not parse(headers).verified


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Client-Cert-Present": "true"},
        {"X-Client-Cert-Chain-Verified": "true"},
    ],
)
def test_missing_headers_not_verified(headers: dict[str, str]) -> None:
    cert = parse({**headers, "X-Client-Cert-Spiffe": CLIENT_SPIFFE_ID})
    assert not cert.verified
    assert cert.missing_headers


def test_header_names_case_insensitive() -> None:
    headers = Headers(
        [
            ("x-client-cert-present", "true"),
            ("X-CLIENT-CERT-CHAIN-VERIFIED", "true"),
            ("x-client-cert-spiffe", CLIENT_SPIFFE_ID),
        ]
    )
    cert = parse_certificate_headers(headers, names_for())
    assert cert.verified
    assert cert.spiffe_id == CLIENT_SPIFFE_ID


def test_overridden_names_used() -> None:
    names = HeaderNames(
        by_key=lb_headers.header_names(
            {
                "MTLS_HEADER_CLIENT_CERT_PRESENT": "X-Mtls-Present",
                "MTLS_HEADER_CLIENT_CERT_CHAIN_VERIFIED": "X-Mtls-Verified",
            }
        ),
        client_id_key="spiffe_id",
    )
    default_only = parse_certificate_headers(verified(), names)
    custom = parse_certificate_headers(
        {"X-Mtls-Present": "true", "X-Mtls-Verified": "true"}, names
    )
    assert not default_only.verified
    assert custom.verified


# --- authenticate_client ---------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "mtls_headers_missing"),
        (
            {
                "X-Client-Cert-Present": "false",
                "X-Client-Cert-Chain-Verified": "false",
                "X-Client-Cert-Error": "client_cert_not_provided",
            },
            "certificate_missing",
        ),
        (
            {
                "X-Client-Cert-Present": "true",
                "X-Client-Cert-Chain-Verified": "false",
                "X-Client-Cert-Error": "client_cert_chain_invalid_eku",
                "X-Client-Cert-Spiffe": CLIENT_SPIFFE_ID,
            },
            "certificate_not_verified",
        ),
        (verified(), "client_id_missing"),
        (verified(**{"X-Client-Cert-Spiffe": ""}), "client_id_missing"),
        (verified(**{"X-Client-Cert-Spiffe": "not-spiffe"}), "client_id_missing"),
    ],
)
def test_client_authentication_rejected(headers: dict[str, str], reason: str) -> None:
    with pytest.raises(InvalidClientError) as caught:
        authenticate_client(parse(headers), names_for())
    assert caught.value.reason == reason
    assert caught.value.status_code == 401


def test_unverified_chain_never_authenticates() -> None:
    # The fingerprint header alone must not authenticate a certificate whose
    # chain failed.
    headers = {
        "X-Client-Cert-Present": "true",
        "X-Client-Cert-Chain-Verified": "false",
        "X-Client-Cert-Hash": "G+SrKkjfs6Kom73j7sp+hY6/5kZ+UjPdBDEyiaOUk08",
    }
    with pytest.raises(InvalidClientError):
        authenticate_client(parse(headers), names_for("sha256_fingerprint"))


@pytest.mark.parametrize(
    ("key", "header", "value", "client_id"),
    [
        ("spiffe_id", "X-Client-Cert-Spiffe", CLIENT_SPIFFE_ID, CLIENT_SPIFFE_ID),
        ("sha256_fingerprint", "X-Client-Cert-Hash", LB_FINGERPRINT, LB_FINGERPRINT),
        (
            "dnsname_sans",
            "X-Client-Cert-DNSName-SANs",
            WHOLE_LIST_SANS,
            "client-1.example.com",
        ),
        (
            "uri_sans",
            "X-Client-Cert-URI-SANs",
            b64(CLIENT_URI_SANS[0]),
            CLIENT_URI_SANS[0],
        ),
    ],
)
def test_client_id_from_header(
    key: str, header: str, value: str, client_id: str
) -> None:
    cert = parse(verified(**{header: value}), key)
    assert authenticate_client(cert, names_for(key)) == client_id


@pytest.mark.parametrize(
    ("key", "header", "value"),
    [
        ("dnsname_sans", "X-Client-Cert-DNSName-SANs", PER_ENTRY_SANS),
        (
            "uri_sans",
            "X-Client-Cert-URI-SANs",
            ",".join(b64(uri) for uri in CLIENT_URI_SANS),
        ),
    ],
)
def test_multipart_san_client_id_refused(key: str, header: str, value: str) -> None:
    # Several comma-separated parts look exactly like a repeated header that
    # the server joined, so they name no client.
    cert = parse(verified(**{header: value}), key)
    assert cert.client_id_ambiguous
    with pytest.raises(InvalidClientError):
        authenticate_client(cert, names_for(key))


def test_client_id_ignores_other_headers() -> None:
    cert = parse(
        verified(
            **{
                "X-Client-Cert-Hash": LB_FINGERPRINT,
                "X-Client-Cert-DNSName-SANs": PER_ENTRY_SANS,
            }
        )
    )
    assert client_id_of(cert, names_for("spiffe_id")) == ""


# --- SAN headers -----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(PER_ENTRY_SANS, id="per-entry"),
        pytest.param(WHOLE_LIST_SANS, id="whole-list"),
        pytest.param(PER_ENTRY_SANS.replace(",", ", "), id="per-entry-spaced"),
        pytest.param(PER_ENTRY_SANS.replace("=", ""), id="per-entry-unpadded"),
        pytest.param(b64(", ".join(TWO_DNS_SANS)), id="whole-list-spaced"),
    ],
)
def test_san_header_both_readings(value: str) -> None:
    assert decode_san_header(value) == TWO_DNS_SANS


@pytest.mark.parametrize(
    ("value", "sans"),
    [
        pytest.param(b64("client-1.example.com"), TWO_DNS_SANS[:1], id="padded"),
        pytest.param(
            b64("https://client-1.example.com/id").rstrip("="),
            ("https://client-1.example.com/id",),
            id="unpadded",
        ),
    ],
)
def test_san_header_single_entry(value: str, sans: tuple[str, ...]) -> None:
    assert decode_san_header(value) == sans


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param(",", id="only-comma"),
        pytest.param(PER_ENTRY_SANS + ",", id="trailing-comma"),
        pytest.param("not base64!", id="not-base64"),
        pytest.param("Y2xpZW50LTEuZXhhbXBsZS5jb20=" + "!", id="bad-character"),
        pytest.param("Y2xpZW50LTEuZXhhbXBsZS5jb20=,!!!!", id="one-bad-of-two"),
        pytest.param(b64("client one.example.com"), id="space-inside-san"),
        pytest.param(b64("client-1.example.com\x00"), id="nul-inside-san"),
        pytest.param(b64("client\x7f.example.com"), id="del-inside-san"),
        pytest.param("w6k=", id="non-ascii-san"),  # base64 of UTF-8 "é"
        pytest.param("Y2xpZW50LTEuZXhhbXBsZS5jb20=\x00", id="nul-in-header"),
        pytest.param("Y2xpZW50LTEuZXhhbXBsZS5jb20=é", id="non-ascii-header"),
        pytest.param("YQ===", id="too-much-padding"),
        pytest.param("Y", id="one-character"),
        pytest.param(b64("a" * 2049), id="san-over-2048"),
    ],
)
def test_san_header_garbage_rejected(value: str) -> None:
    assert decode_san_header(value) is None


def test_san_header_over_limit_rejected() -> None:
    entry = b64("a" * 40)
    value = ",".join([entry] * (4097 // (len(entry) + 1) + 1))
    assert len(value) > 4096
    assert decode_san_header(value) is None


def test_san_garbage_reported() -> None:
    cert = parse(verified(**{"X-Client-Cert-DNSName-SANs": "%%%"}), "dnsname_sans")
    assert cert.dns_sans == ()
    assert "X-Client-Cert-DNSName-SANs" in cert.problems


def test_san_garbage_no_client_id() -> None:
    cert = parse(verified(**{"X-Client-Cert-DNSName-SANs": "%%%"}), "dnsname_sans")
    with pytest.raises(InvalidClientError):
        authenticate_client(cert, names_for("dnsname_sans"))


# --- Fingerprint -----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fingerprint"),
    [
        pytest.param(LB_FINGERPRINT, LB_FINGERPRINT, id="lb-format"),
        pytest.param(LB_FINGERPRINT + "=", LB_FINGERPRINT, id="padded"),
        pytest.param(
            "G+SrKkjfs6Kom73j7sp+hY6/5kZ+UjPdBDEyiaOUk08",
            "G+SrKkjfs6Kom73j7sp+hY6/5kZ+UjPdBDEyiaOUk08",
            id="plus-and-slash",
        ),
    ],
)
def test_lb_fingerprint_accepted(value: str, fingerprint: str) -> None:
    assert parse_fingerprint(value) == fingerprint


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(LB_FINGERPRINT[:-1], id="42-chars"),
        pytest.param(LB_FINGERPRINT + "A", id="44-chars"),
        pytest.param(LB_FINGERPRINT + "==", id="double-padding"),
        pytest.param(LB_FINGERPRINT.replace("+", "-"), id="base64url-dash"),
        pytest.param(
            "G+SrKkjfs6Kom73j7sp+hY6/5kZ+UjPdBDEyiaOUk08".replace("/", "_"),
            id="base64url-underscore",
        ),
        pytest.param(LB_FINGERPRINT[:-1] + "p", id="nonzero-trailing-bits"),
        pytest.param(LB_FINGERPRINT[:-1] + "!", id="not-base64"),
        pytest.param(LB_FINGERPRINT[:-1] + "\x00", id="nul"),
        pytest.param(LB_FINGERPRINT[:-1] + "é", id="non-ascii"),
        pytest.param(LB_FINGERPRINT[:20] + " " + LB_FINGERPRINT[21:], id="space"),
        pytest.param(
            f"{LB_FINGERPRINT},G+SrKkjfs6Kom73j7sp+hY6/5kZ+UjPdBDEyiaOUk08",
            id="duplicate-joined",
        ),
        pytest.param(
            f"{LB_FINGERPRINT}, G+SrKkjfs6Kom73j7sp+hY6/5kZ+UjPdBDEyiaOUk08",
            id="duplicate-joined-spaced",
        ),
        pytest.param("a" * 64, id="hex-sha256"),
        pytest.param("", id="empty"),
    ],
)
def test_bad_fingerprint_rejected(value: str) -> None:
    assert parse_fingerprint(value) is None


@pytest.mark.parametrize(
    "value",
    [
        LB_FINGERPRINT[:-1],
        f"{LB_FINGERPRINT},{LB_FINGERPRINT}",
        LB_FINGERPRINT + "\x00",
        "",
    ],
)
def test_bad_fingerprint_no_client_id(value: str) -> None:
    key = "sha256_fingerprint"
    cert = parse(verified(**{"X-Client-Cert-Hash": value}), key)
    assert cert.sha256_fingerprint == ""
    with pytest.raises(InvalidClientError):
        authenticate_client(cert, names_for(key))


# --- SPIFFE ID -------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(f"{CLIENT_SPIFFE_ID},spiffe://example.org/other", id="joined"),
        pytest.param(f"{CLIENT_SPIFFE_ID}, spiffe://example.org/other", id="spaced"),
        pytest.param("https://example.org/client-1", id="not-spiffe"),
        pytest.param("spiffe://", id="no-trust-domain"),
        pytest.param(CLIENT_SPIFFE_ID + "\x00", id="nul"),
        pytest.param(CLIENT_SPIFFE_ID + "é", id="non-ascii"),
        pytest.param("spiffe://example.org/a b", id="space"),
        pytest.param("spiffe://" + "a" * 2040, id="over-2048-bytes"),
    ],
)
def test_bad_spiffe_rejected(value: str) -> None:
    cert = parse(verified(**{"X-Client-Cert-Spiffe": value}))
    assert cert.spiffe_id == ""
    with pytest.raises(InvalidClientError):
        authenticate_client(cert, names_for())


@pytest.mark.parametrize(
    "length",
    [
        pytest.param(40, id="short"),
        pytest.param(2048, id="2048-bytes"),  # the longest ID the LB sends
    ],
)
def test_spiffe_id_accepted(length: int) -> None:
    spiffe_id = "spiffe://example.org/" + "a" * (length - len("spiffe://example.org/"))
    assert len(spiffe_id) == length
    cert = parse(verified(**{"X-Client-Cert-Spiffe": spiffe_id}))
    assert cert.spiffe_id == spiffe_id


# --- Serial number and dates -----------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        LB_SERIAL,
        "00:C9:77:71:DB",
        "01",
        ":".join(["7f"] * 50),  # 50 bytes, the LB's limit
    ],
)
def test_serial_kept_as_formatted(value: str) -> None:
    assert parse(verified(**{"X-Client-Cert-Serial-Number": value})).serial_number == (
        value
    )


@pytest.mark.parametrize(
    "value",
    [
        ":".join(["7f"] * 51),  # over 50 bytes
        "00ad3e0e",
        "0:ad",
        "00:ad:",
        "00-ad-3e",
        "00:zz",
        "00:ad\x00",
        "00:ad,00:ae",
    ],
)
def test_serial_garbage_dropped(value: str) -> None:
    cert = parse(verified(**{"X-Client-Cert-Serial-Number": value}))
    assert cert.serial_number == ""
    assert "X-Client-Cert-Serial-Number" in cert.problems


UTC = datetime.UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "2023-09-12T14:55:19+00:00",
            datetime.datetime(2023, 9, 12, 14, 55, 19, tzinfo=UTC),
        ),
        (
            "2023-10-12T14:55:18Z",
            datetime.datetime(2023, 10, 12, 14, 55, 18, tzinfo=UTC),
        ),
        (
            "2023-10-12T14:55:18.123456789Z",  # nanoseconds, cut to microseconds
            datetime.datetime(2023, 10, 12, 14, 55, 18, 123456, tzinfo=UTC),
        ),
        (
            "2023-10-12T16:55:18.5+02:00",
            datetime.datetime(2023, 10, 12, 14, 55, 18, 500000, tzinfo=UTC),
        ),
    ],
)
def test_rfc3339_date_parsed(value: str, expected: datetime.datetime) -> None:
    assert parse_rfc3339(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "2023-09-12T14:55:19",  # no offset
        "2023-09-12",
        "2023-13-12T14:55:19+00:00",
        "2023-09-31T14:55:19+00:00",
        "12/09/2023 14:55:19",
        "1694530519",
        "2023-09-12T14:55:19+00:00\x00",
        "garbage",
    ],
)
def test_bad_date_rejected(value: str) -> None:
    assert parse_rfc3339(value) is None


def test_dates_from_headers() -> None:
    cert = parse(
        verified(
            **{
                "X-Client-Cert-Valid-Not-Before": "2023-09-12T14:55:19+00:00",
                "X-Client-Cert-Valid-Not-After": "not a date",
            }
        )
    )
    assert cert.not_before == datetime.datetime(2023, 9, 12, 14, 55, 19, tzinfo=UTC)
    assert cert.not_after is None
    assert cert.problems == ("X-Client-Cert-Valid-Not-After",)


# --- Error and log labels --------------------------------------------------


def test_error_made_printable() -> None:
    cert = parse(
        {
            "X-Client-Cert-Present": "true",
            "X-Client-Cert-Chain-Verified": "false",
            "X-Client-Cert-Error": "client_cert_chain_invalid_eku\x00é" + "x" * 600,
        }
    )
    assert cert.error.startswith("client_cert_chain_invalid_eku")
    assert "\x00" not in cert.error
    assert "é" not in cert.error
    assert len(cert.error) <= 512


def test_labels_carry_cert_facts() -> None:
    cert = parse(
        verified(
            **{
                "X-Client-Cert-Hash": LB_FINGERPRINT,
                "X-Client-Cert-Serial-Number": LB_SERIAL,
                "X-Client-Cert-Spiffe": CLIENT_SPIFFE_ID,
                "X-Client-Cert-DNSName-SANs": PER_ENTRY_SANS,
                "X-Client-Cert-URI-SANs": "%%%",
            }
        )
    )
    labels = certificate_labels(cert)
    assert labels["x5_sha256"] == LB_FINGERPRINT
    assert labels["x5_serial"] == LB_SERIAL
    assert labels["x5_spiffe"] == CLIENT_SPIFFE_ID
    assert labels["x5_dnssans"] == ",".join(CLIENT_DNS_SANS)
    assert labels["malformed_headers"] == "X-Client-Cert-URI-SANs"
